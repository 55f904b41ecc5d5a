//! `edge-agent`: the data plane at a site's edge (mTLS ingress from peer sites, egress for local
//! callers, weighted and failover routing).
//!
//! **Not implemented yet** (tracked by issue #4): the binary says so and exits with status 2
//! instead of pretending to proxy anything.

fn main() {
    eprintln!("edge-agent: not implemented yet (issue #4); no traffic is proxied");
    std::process::exit(2);
}
