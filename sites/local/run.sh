#!/usr/bin/env bash
# Starts a local multi-site federation on loopback, no cluster and no Docker needed:
# three sites (a, b, c) and an edge node linked to c only, each a federationd process with a
# fresh certificate from a fresh federation CA. It exports services at run time and shows the
# catalogs converging, then keeps running until Ctrl-C (or exits at once with --once).
#
#   sites/local/run.sh [--once] [--dir DIR] [--port-base N] [--debug]
set -euo pipefail

once=0
dir=""
port_base=${MULTIMESH_PORT_BASE:-17100}
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --once) once=1 ;;
    --dir) dir=$2; shift ;;
    --port-base) port_base=$2; shift ;;
    --debug) profile=debug ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
echo "==> building federationd and federationctl ($profile)"
if [ "$profile" = release ]; then
  cargo build --release -q -p multimesh-federation --manifest-path "$root/Cargo.toml"
else
  cargo build -q -p multimesh-federation --manifest-path "$root/Cargo.toml"
fi
bin="$target/$profile"
ctl() { "$bin/federationctl" "$@"; }

[ -n "$dir" ] || dir=$(mktemp -d -t multimesh-demo.XXXXXX)
mkdir -p "$dir"
echo "==> working folder: $dir"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "==> stopped all sites (state and logs kept in $dir)"
}
trap cleanup EXIT INT TERM

echo "==> creating a federation CA and site certificates"
ctl certs init --trust-domain multimesh.local --out "$dir/pki" --force 2>/dev/null
for s in a b c node; do ctl certs issue --site "$s" --ca-dir "$dir/pki" --out "$dir/pki" 2>/dev/null; done

port() { case "$1" in a) echo $((port_base + 1));; b) echo $((port_base + 2));; c) echo $((port_base + 3));; node) echo $((port_base + 4));; esac; }

# Links: a-b, a-c, b-c (the lower name dials), node dials c (c has no address for node).
write_config() {
  local site=$1; shift
  local f="$dir/$site/federationd.toml"
  mkdir -p "$dir/$site"
  cat > "$f" <<EOT
site = "$site"
trust_domain = "multimesh.local"
listen = "127.0.0.1:$(port "$site")"
admin_socket = "admin.sock"
state_file = "state.json"
edge_ingress = ["127.0.0.1:$((port_base + 40 + $(port "$site") - port_base))"]

[tls]
ca = "../pki/ca.pem"
cert = "../pki/$site.pem"
key = "../pki/$site-key.pem"

[sync]
heartbeat_ms = 500
EOT
  for peer in "$@"; do
    local name=${peer%%=*} addr=${peer#*=}
    printf '\n[[peers]]\nsite = "%s"\n' "$name" >> "$f"
    [ "$addr" != "$name" ] && printf 'address = "%s"\n' "$addr" >> "$f"
  done
  cat >> "$f"
}

write_config a "b=localhost:$(port b)" "c=127.0.0.1:$(port c)" <<'EOT'

[[services]]
name = "frontend"
namespace = "tours"
ports = [{ name = "http", port = 8080, protocol = "http" }]

[[services]]
name = "booking"
namespace = "tours"
ports = [{ name = "http", port = 8081, protocol = "http" }]
export = true
EOT
write_config b a "c=127.0.0.1:$(port c)" <<'EOT'

[[services]]
name = "payment"
namespace = "tours"
ports = [{ name = "grpc", port = 9090, protocol = "grpc" }]
export = true
to = ["a"]

[[services]]
name = "notification"
namespace = "tours"
ports = [{ name = "http", port = 8083, protocol = "http" }]
EOT
write_config c a b node <<'EOT'

[[services]]
name = "tour-catalog"
namespace = "tours"
ports = [{ name = "http", port = 8082, protocol = "http" }]
export = true
EOT
write_config node "c=127.0.0.1:$(port c)" <<'EOT'

[[services]]
name = "notification"
namespace = "tours"
ports = [{ name = "http", port = 8083, protocol = "http" }]
export = true
EOT

echo "==> starting federationd for a, b, c and node (logs in $dir/<site>/federationd.log)"
for s in a b c node; do
  RUST_LOG=${RUST_LOG:-info} "$bin/federationd" --config "$dir/$s/federationd.toml" > "$dir/$s/federationd.log" 2>&1 &
  pids+=($!)
done
for s in a b c node; do
  for _ in $(seq 100); do [ -S "$dir/$s/admin.sock" ] && break; sleep 0.1; done
  [ -S "$dir/$s/admin.sock" ] || { echo "site $s did not start:"; cat "$dir/$s/federationd.log"; exit 1; }
done

echo "==> exporting at run time: b exports notification to all sites"
MULTIMESH_ADMIN_SOCKET="$dir/b/admin.sock" ctl export notification --namespace tours

# Expected: a and b see all five exports (payment@b is scoped to a, and b is its origin);
# c and the node see the four others.
expect_a=5 expect_b=5 expect_c=4 expect_node=4
echo "==> waiting for the catalogs to converge"
start=$(date +%s%N)
for _ in $(seq 200); do
  ok=1
  for s in a b c node; do
    want_var="expect_$s"; want=${!want_var}
    n=$(MULTIMESH_ADMIN_SOCKET="$dir/$s/admin.sock" ctl catalog -o json | python3 -c 'import json,sys; print(sum(len(o["entries"]) for o in json.load(sys.stdin)["origins"]))')
    [ "$n" = "$want" ] || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.1
done
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
if [ $ok != 1 ]; then echo "catalogs did not converge; see the logs in $dir"; exit 1; fi
echo "==> converged in ${elapsed} ms"
for s in a b c node; do
  echo; echo "---- site $s: catalog"
  MULTIMESH_ADMIN_SOCKET="$dir/$s/admin.sock" ctl catalog
done
echo; echo "---- site c: peers"
MULTIMESH_ADMIN_SOCKET="$dir/c/admin.sock" ctl peers

[ $once = 1 ] && exit 0
echo
echo "Sites are running. Try:"
echo "  MULTIMESH_ADMIN_SOCKET=$dir/a/admin.sock $bin/federationctl export frontend --namespace tours --to node"
echo "  MULTIMESH_ADMIN_SOCKET=$dir/node/admin.sock $bin/federationctl catalog"
echo "Press Ctrl-C to stop every site."
while true; do sleep 3600; done
