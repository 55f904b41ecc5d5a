# Shared by the data-plane benchmark scripts (sourced, not run): a work folder removed on exit
# with every process started here, nginx configs, process start-up, and port waits.
# shellcheck shell=bash

# The header every benchmark call sends: which service the edge agent routes it to.
# shellcheck disable=SC2034
DEST="x-multimesh-destination: payment.shop.svc.clusterset.local:8080"

# bench_init PREFIX: sets $work (a fresh folder under /tmp) and stops every process started
# with `start`, then removes $work, when the script exits.
bench_init() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# nginx_conf NAME HTTP_BODY WORKERS: writes $work/NAME/nginx.conf.
nginx_conf() {
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
worker_processes $3;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/$1/tmp; proxy_temp_path $work/$1/tmp;
  fastcgi_temp_path $work/$1/tmp; uwsgi_temp_path $work/$1/tmp; scgi_temp_path $work/$1/tmp;
  keepalive_requests 1000000;
$2
}
CONF
}

# start NAME COMMAND...: runs COMMAND in the background (output in $work/NAME.out) and sets
# pid_NAME.
start() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>&1 &
  pids+=("$!")
  eval "pid_$name=$!"
}

# wait_port PORT: waits up to 10 s for 127.0.0.1:PORT to accept connections.
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; return 1
}

# start_backend NAME PORT: the benchmark backend, one nginx worker answering "ok".
start_backend() {
  nginx_conf "$1" "  server { listen 127.0.0.1:$2; location / { return 200 \"ok\\n\"; } }" 1
  start "$1" nginx -p "$work/$1" -c "$work/$1/nginx.conf" -g 'daemon off;'
}

# edge_pki BIN: a federation CA and the edge identities of sites a and b, in $work/pki.
edge_pki() {
  "$1/federationctl" certs init --trust-domain bench.multimesh --out "$work/pki" >/dev/null
  for s in a b; do
    "$1/federationctl" certs issue --site "$s" --role edge --ca-dir "$work/pki" --out "$work/pki" >/dev/null
  done
}

# start_edge_pair BIN PORT BACKEND EDGE_IN EDGE_OUT: the edge-agent pair every benchmark
# measures. Site a's agent serves payment (service port PORT) from 127.0.0.1:BACKEND on its
# ingress 127.0.0.1:EDGE_IN; site b's agent sends payment to a from its HTTP egress
# 127.0.0.1:EDGE_OUT. Routes from files; identities from edge_pki. Sets pid_edge_a, pid_edge_b.
start_edge_pair() {
  local bin=$1 port=$2 backend=$3 edge_in=$4 edge_out=$5 s
  for s in a b; do
    mkdir -p "$work/edge-$s"
    cat > "$work/edge-$s/edge.toml" <<EOT
site = "$s"
trust_domain = "bench.multimesh"
$([ "$s" = a ] && echo "ingress = \"127.0.0.1:$edge_in\"" || echo "egress_http = \"127.0.0.1:$edge_out\"")
[tls]
ca = "$work/pki/ca.pem"
cert = "$work/pki/$s-edge.pem"
key = "$work/pki/$s-edge-key.pem"
[routes]
file = "routes.yaml"
EOT
  done
  cat > "$work/edge-a/routes.yaml" <<EOT
services:
- {name: payment, namespace: shop, ports: [{port: $port}], destinations: [{site: a}]}
EOT
  cat > "$work/edge-b/routes.yaml" <<EOT
services:
- {name: payment, namespace: shop, ports: [{port: $port}], destinations: [{site: a, addresses: ['127.0.0.1:$edge_in']}]}
EOT
  cat >> "$work/edge-a/edge.toml" <<EOT
[[local]]
name = "payment"
namespace = "shop"
ports = [{ port = $port, upstream = "127.0.0.1:$backend" }]
EOT
  RUST_LOG=warn start edge_a "$bin/edge-agent" run --config "$work/edge-a/edge.toml"
  RUST_LOG=warn start edge_b "$bin/edge-agent" run --config "$work/edge-b/edge.toml"
}
