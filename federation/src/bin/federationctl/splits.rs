//! `federationctl apply`, `splits` and `delete-split`: this site's traffic splits.

use std::path::{Path, PathBuf};

use clap::Args;
use multimesh_proto::admin::v1 as api;

use crate::output::{Out, Table};
use crate::{Failure, client, read_input, status};

/// `apply` arguments.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  federationctl apply -f reviews-split.yaml\n  federationctl apply -f - --dry-run < split.yaml"
)]
pub struct Apply {
    /// Input YAML file; repeatable; `-` reads standard input.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Validate and show the result, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `delete-split` arguments.
#[derive(Args)]
pub struct DeleteSplit {
    /// Root service name.
    service: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

/// The table of a splits answer.
fn splits_table(r: &api::SplitsResponse) -> Table {
    let mut t = Table::new(&["SPLIT", "BACKEND", "WEIGHT", "SHARE", "SITES"])
        .wide(&["SOURCE"])
        .right(&["WEIGHT", "SHARE"]);
    for s in &r.splits {
        for b in &s.backends {
            let sites = if b.sites.is_empty() {
                "(not routable now)".to_string()
            } else {
                b.sites.join(",")
            };
            t.row(vec![
                format!("{}/{}", s.namespace, s.service),
                b.service.clone(),
                b.weight.to_string(),
                format!("{:.1}%", b.percent),
                sites,
                s.source.clone(),
            ]);
        }
    }
    t
}

/// `federationctl apply`.
pub async fn apply(out: Out, socket: &Path, a: Apply) -> Result<(), Failure> {
    let files = a
        .files
        .iter()
        .map(|f| {
            Ok(api::SourceFile {
                name: f.display().to_string(),
                text: read_input(f)?,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let mut c = client(socket).await?;
    let r = c
        .apply_splits(api::ApplySplitsRequest {
            files,
            dry_run: a.dry_run,
        })
        .await
        .map_err(status)?
        .into_inner();
    let verb = if a.dry_run {
        "valid (dry run)"
    } else {
        "applied"
    };
    out.print(&r, |o| {
        format!(
            "{}{} split(s) {verb}, {} changed\n",
            o.table(&splits_table(&r)),
            r.splits.len(),
            r.changed
        )
    })
}

/// `federationctl splits`.
pub async fn show(out: Out, socket: &Path) -> Result<(), Failure> {
    let mut c = client(socket).await?;
    let r = c
        .splits(api::SplitsRequest {})
        .await
        .map_err(status)?
        .into_inner();
    out.print(&r, |o| o.table(&splits_table(&r)))
}

/// `federationctl delete-split`.
pub async fn delete(out: Out, socket: &Path, d: DeleteSplit) -> Result<(), Failure> {
    let mut c = client(socket).await?;
    let r = c
        .delete_split(api::DeleteSplitRequest {
            service: d.service.clone(),
            namespace: d.namespace.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    out.print(&r, |_| {
        format!(
            "deleted the traffic split of {}/{}\n",
            d.namespace, d.service
        )
    })
}
