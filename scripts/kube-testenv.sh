#!/usr/bin/env bash
# Real Kubernetes API servers on loopback for the `kubernetes` backend tests: no cluster, no
# Docker, no mocks. Each simulated site gets its own etcd and its own kube-apiserver, both
# upstream, built once from their Go modules at the versions pinned in tools/*/go.mod and cached.
#
#   scripts/kube-testenv.sh install            build etcd and kube-apiserver (cached)
#   scripts/kube-testenv.sh start DIR SITE...  start one etcd + API server per site, wait ready
#   scripts/kube-testenv.sh restart-apiserver DIR SITE   start a killed API server again
#   scripts/kube-testenv.sh stop DIR           stop everything started under DIR
#   scripts/kube-testenv.sh path               print the cached kube-apiserver binary path
#
# `start` writes, per site, DIR/SITE/kubeconfig (admin token) and DIR/SITE/env (URL, token, CA,
# port). Tests read them through federation's test support. Ports: MULTIMESH_KUBE_PORT_BASE
# (default 26400); site i uses BASE+10*i (etcd client), +1 (etcd peer), +2 (API server).
#
# Build: tools/kube-apiserver is a small Go module that requires k8s.io/kubernetes and pins each
# of its staging modules (k8s.io/api, ...) to the matching v0 release, since a dependent module
# cannot see the local replacements of k8s.io/kubernetes' own go.mod; tools/etcd requires
# go.etcd.io/etcd/server. Go >= 1.24 builds them from the Go module proxy (about 3 minutes and
# 1 minute on 2 cores); go.sum holds the hashes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MULTIMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multimesh}
KUBE_VERSION=$(grep -oE 'k8s.io/kubernetes v[0-9.]+' "$ROOT/tools/kube-apiserver/go.mod" | head -1 | cut -d" " -f2)
ETCD_VERSION=$(grep -oE 'go.etcd.io/etcd/server/v3 v[0-9.]+' "$ROOT/tools/etcd/go.mod" | head -1 | cut -d" " -f2)
# The API server reports its version (Istio reads it): stamped at link time, as upstream's release
# build does. "-2" names this build recipe in the cache.
APISERVER="$CACHE/kube-apiserver-$KUBE_VERSION-2"
ETCD="$CACHE/etcd-$ETCD_VERSION"
PORT_BASE=${MULTIMESH_KUBE_PORT_BASE:-26400}
if [ -z "$KUBE_VERSION" ] || [ -z "$ETCD_VERSION" ]; then
  echo "kube-testenv: cannot read the pinned versions in tools/*/go.mod" >&2
  exit 1
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'kube-testenv: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local need=()
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  command -v go >/dev/null || die "Go >= 1.24 is needed to build etcd and kube-apiserver from their modules (https://go.dev/dl)"
}

# Builds the Go module in tools/$1 into $2 (cached: skipped when $2 exists), linker flags $3.
build_tool() {
  local tool=$1 out=$2 ldflags=${3:-}
  if [ -x "$out" ]; then
    log "$tool cached at $out"
    return
  fi
  mkdir -p "$CACHE"
  log "building $tool $(basename "$out" | sed "s/^$tool-//") from its Go module (tools/$tool)"
  (cd "$ROOT/tools/$tool" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$out.tmp" .) \
    || die "building $tool failed"
  mv "$out.tmp" "$out"
  log "$tool built: $out"
}

# One CA and serving certificate for all API servers of a run, plus the service-account key.
make_pki() {
  local dir=$1
  [ -f "$dir/ca.crt" ] && return
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=multimesh-kube-testenv-ca" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/apiserver.key" -out "$dir/apiserver.csr" -subj "/CN=kube-apiserver" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/apiserver.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
}

# The API server of one site (also used to restart a killed one: same etcd, same port).
run_apiserver() {
  local dir=$1 site=$2 etcd_port=$3 api_port=$4
  local sdir="$dir/$site"
  "$APISERVER" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" --cert-dir "$sdir/certs" \
    --token-auth-file "$sdir/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc" \
    --api-audiences "https://kubernetes.default.svc" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount \
    --v 1 >>"$sdir/apiserver.log" 2>&1 &
  echo $! >"$sdir/apiserver.pid"
}

start_site() {
  local dir=$1 site=$2 index=$3
  local sdir="$dir/$site"
  local etcd_port=$((PORT_BASE + 10 * index)) peer_port=$((PORT_BASE + 10 * index + 1))
  local api_port=$((PORT_BASE + 10 * index + 2))
  mkdir -p "$sdir"
  local token
  token=$(openssl rand -hex 16)
  # token,user,uid,"group": the admin token is for test set-up only; federationd gets its own
  # service-account token bound to the shipped ClusterRole.
  printf '%s,admin,admin,"system:masters"\n' "$token" >"$sdir/tokens.csv"
  "$ETCD" --name "$site" --data-dir "$sdir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "$site=http://127.0.0.1:$peer_port" \
    --log-level warn >"$sdir/etcd.log" 2>&1 &
  echo $! >"$sdir/etcd.pid"
  run_apiserver "$dir" "$site" "$etcd_port" "$api_port"
  cat >"$sdir/env" <<EOF
SITE=$site
URL=https://127.0.0.1:$api_port
TOKEN=$token
CA=$dir/pki/ca.crt
ETCD=http://127.0.0.1:$etcd_port
ETCD_PORT=$etcd_port
API_PORT=$api_port
EOF
  # Names are quoted: Go's YAML reader reads a bare `n` or `y` (site names here) as a boolean.
  cat >"$sdir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: "$site"
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: "$site"
  context: {cluster: "$site", user: admin}
current-context: "$site"
EOF
}

wait_ready() {
  local dir=$1 site=$2
  local url token
  url=$(sed -n 's/^URL=//p' "$dir/$site/env")
  token=$(sed -n 's/^TOKEN=//p' "$dir/$site/env")
  local deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$(cat "$dir/$site/apiserver.pid")" 2>/dev/null; then
      tail -30 "$dir/$site/apiserver.log" >&2
      die "kube-apiserver for site $site exited (log: $dir/$site/apiserver.log)"
    fi
    if curl -fsS --cacert "$dir/pki/ca.crt" -H "Authorization: Bearer $token" "$url/readyz" >/dev/null 2>&1; then
      log "site $site: API server ready at $url"
      return
    fi
    sleep 0.5
  done
  tail -30 "$dir/$site/apiserver.log" >&2
  die "kube-apiserver for site $site not ready after 90 s"
}

stop_all() {
  local dir=$1
  local pidfile
  for pidfile in "$dir"/*/apiserver.pid "$dir"/*/etcd.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  for pidfile in "$dir"/*/apiserver.pid "$dir"/*/etcd.pid; do
    [ -f "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  install)
    install_packages
    build_tool etcd "$ETCD"
    v=k8s.io/component-base/version
    minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
    build_tool kube-apiserver "$APISERVER" \
      "-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
    ;;
  path)
    [ -x "$APISERVER" ] || die "kube-apiserver not built yet: run $0 install"
    echo "$APISERVER"
    ;;
  start)
    [ $# -ge 3 ] || die "usage: $0 start DIR SITE..."
    dir=$2
    shift 2
    [ -x "$APISERVER" ] || die "kube-apiserver not built yet: run $0 install"
    [ -x "$ETCD" ] || die "etcd not built yet: run $0 install"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    make_pki "$dir/pki"
    i=0
    for site in "$@"; do start_site "$dir" "$site" "$i"; i=$((i + 1)); done
    for site in "$@"; do wait_ready "$dir" "$site"; done
    ;;
  restart-apiserver)
    [ $# -eq 3 ] || die "usage: $0 restart-apiserver DIR SITE"
    dir=$(cd "$2" && pwd)
    site=$3
    etcd_port=$(sed -n 's/^ETCD_PORT=//p' "$dir/$site/env")
    api_port=$(sed -n 's/^API_PORT=//p' "$dir/$site/env")
    run_apiserver "$dir" "$site" "$etcd_port" "$api_port"
    wait_ready "$dir" "$site"
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    stop_all "$2"
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
