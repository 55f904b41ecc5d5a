#!/usr/bin/env bash
# Control-plane benchmark: five federationd sites in a full mesh on loopback, 10,000 services
# declared at the origin. Builds the dist profile (what images ship), runs the harness (bench/src/bin/control_plane.rs)
# and writes bench/results/control-plane.json; the Markdown table it prints goes to BENCHMARKS.md.
#
#   bash bench/control-plane.sh [harness options, e.g. --runs 5 --changes 500]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
echo "==> building the dist profile (fat LTO, what images ship)" >&2
cargo build --profile dist --locked -p multimesh-federation -p multimesh-bench >&2
mkdir -p bench/results
echo "==> machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)" >&2
exec "$target/dist/control-plane" \
  --federationd "$target/dist/federationd" \
  --json bench/results/control-plane.json \
  "$@"
