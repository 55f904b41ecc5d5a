//! `federationctl certs`: the federation CA and site certificates, written as files (no
//! daemon involved).

use std::path::PathBuf;

use clap::Subcommand;
use federation::identity::{self, Pair, Role, SiteId, Validity};

use crate::{Failure, usage};

#[derive(Subcommand)]
pub enum Certs {
    /// Create a federation CA (writes ca.pem and ca-key.pem, the key with mode 0600).
    Init {
        /// SPIFFE trust domain of the federation, e.g. multimesh.example.
        #[arg(long)]
        trust_domain: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a site's two certificates: SITE-federation.pem (federationd: catalog sync and the
    /// site's record signatures, spiffe://<trust-domain>/site/<SITE>/federation) and
    /// SITE-edge.pem (the edge agent: calls, spiffe://.../site/<SITE>/edge), each with its
    /// -key.pem (mode 0600). Example: `federationctl certs issue --site a --ca-dir pki --out pki`
    Issue {
        /// Site name.
        #[arg(long)]
        site: String,
        /// Issue only this identity: `federation` or `edge` (default: both).
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Folder holding ca.pem and ca-key.pem.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

/// Runs a `certs` subcommand.
pub fn run(c: Certs) -> Result<(), Failure> {
    match c {
        Certs::Init {
            trust_domain,
            out,
            days,
            force,
        } => {
            let (cert, key) = (out.join("ca.pem"), out.join("ca-key.pem"));
            if !force && (cert.exists() || key.exists()) {
                return Err(usage(format!(
                    "{} already exists; pass --force to replace the CA",
                    cert.display()
                )));
            }
            if days < 1 {
                return Err(usage(format!("invalid --days {days}: must be at least 1")));
            }
            let ca = identity::init_ca(&trust_domain, days).map_err(|e| usage(e.to_string()))?;
            identity::write_file(&cert, &ca.cert_pem, false)?;
            identity::write_file(&key, &ca.key_pem, true)?;
            eprintln!(
                "created federation CA for trust domain {trust_domain}: {}",
                cert.display()
            );
            Ok(())
        }
        Certs::Issue {
            site,
            role,
            ca_dir,
            out,
            days,
        } => {
            if days < 1 {
                return Err(usage(format!("invalid --days {days}: must be at least 1")));
            }
            let ca_cert = ca_dir.join("ca.pem");
            let ca = Pair {
                cert_pem: std::fs::read_to_string(&ca_cert)
                    .map_err(|e| Failure(format!("{}: {e}", ca_cert.display()), 1))?,
                key_pem: std::fs::read_to_string(ca_dir.join("ca-key.pem")).map_err(|e| {
                    Failure(format!("{}: {e}", ca_dir.join("ca-key.pem").display()), 1)
                })?,
            };
            let der = identity::read_certs(&ca_cert)?;
            let td = identity::trust_domain_of_ca(&der[0])?;
            let roles = role.map_or(Role::ALL.to_vec(), |r| vec![r]);
            for role in roles {
                let id = SiteId::new(&td, &site, role)
                    .map_err(|e| usage(format!("invalid --site: {e}")))?;
                let (cert, _) = identity::issue_to(&out, &ca, &id, Validity::days(days))?;
                let until = identity::not_after(&std::fs::read_to_string(&cert)?)?;
                let clamped = if until < Validity::days(days).not_after - time::Duration::minutes(1)
                {
                    " (the CA's own expiry: a certificate never outlives its CA)"
                } else {
                    ""
                };
                eprintln!(
                    "issued {id} -> {}, valid until {until}{clamped}",
                    cert.display()
                );
            }
            Ok(())
        }
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: federation or edge"))
}
