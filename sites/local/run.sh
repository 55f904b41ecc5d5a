#!/usr/bin/env bash
# The tour-booking demo on this machine, no cluster and no Docker: three sites (a, b, c) and an
# edge node linked to c only, each a federationd + edge agent + some of the app's services as
# local processes on loopback, linked by mTLS with certificates from a fresh federation CA.
# Prints the front end's and the status page's URLs; Ctrl-C stops everything.
#
#   sites/local/run.sh [--walkthrough] [--meshes] [--once] [--dir DIR] [--port-base N] [--release|--debug] [...]
#
# Builds with the `demo` profile (optimised, quick to build); --release uses the release
# profile, --debug an unoptimised build. Without --meshes, federationd is built without its
# Kubernetes backend (no site here is a cluster), which halves the first build.
#
# --walkthrough books a tour across sites, shifts tour-catalog 90/10 -> 50/50 -> 0/100 with a
# TrafficSplit and measures it, kills site b's edge agent to show payment failing over, and
# restores it. --meshes adds sites m and n, Kubernetes sites (upstream kube-apiserver) running a
# real Istio mesh each (upstream istiod, istio-agent and Envoy; built once with Go >= 1.26 and
# cached): the walkthrough's split is then applied in m's cluster and measured through m's
# Envoy, and m's Envoy calls n's app through n's Envoy. Other options go to multimesh-demo (see
# `multimesh-demo --help`).
set -euo pipefail

profile=demo
features=(--no-default-features)
args=()
for a in "$@"; do
  case "$a" in
    --meshes) features=(); args+=("$a") ;;
    --debug) profile=debug ;;
    --release) profile=release ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
echo "==> building federationd, federationctl, edge-agent and the app ($profile)" >&2
build=(cargo build -q --manifest-path "$root/Cargo.toml" -p multimesh-federation -p edge-agent -p multimesh-tours --bins "${features[@]}")
case "$profile" in
  release) build+=(--release) ;;
  demo) build+=(--profile demo) ;;
esac
"${build[@]}"
exec "$target/$profile/multimesh-demo" "${args[@]}"
