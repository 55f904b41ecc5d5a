#!/usr/bin/env bash
# Data-plane benchmark: the same topology built four ways, in one run, on loopback:
#
#   client -> egress proxy -> (mTLS) -> ingress proxy -> backend (nginx, "ok")
#
#   direct   client -> backend (no proxies: the floor)
#   edge     edge-agent pair (site b egress, site a ingress; one HTTP/2 mTLS link)
#   haproxy  HAProxy pair (HTTP/2 over mTLS between them, connection reuse always)
#   nginx    nginx pair (HTTP/1.1 keep-alive over mTLS between them: nginx cannot speak
#            HTTP/2 to an upstream)
#
# For each: max throughput with wrk (HTTP/1.1) and h2load (h2c), latency percentiles at a
# fixed rate below saturation with bench's `loadgen` (open loop, no coordinated omission),
# CPU seconds of the proxy processes per 10k requests (from /proc during the throughput runs),
# their system calls per request (`perf stat` during the throughput runs, when perf is
# installed), their threads' context switches per request (from /proc), and their peak RSS
# (VmHWM). Writes bench/results/data-plane.json and prints a Markdown table.
#
#   bash bench/data-plane.sh [--runs N] [--seconds S] [--rate R] [--quick]
#
# Needs: wrk, h2load (nghttp2-client), haproxy, nginx (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 seconds=10 rate=2000 quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --quick) quick=1; runs=1; seconds=2; rate=500; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
need=()
for t in wrk:wrk h2load:nghttp2-client haproxy:haproxy nginx:nginx-light curl:curl; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
fi
if [ "$quick" = 1 ]; then
  # The smoke run checks that the harness works, not speed: reuse the test build (same features
  # as `cargo nextest run --workspace`, so nothing is compiled twice) rather than a release build.
  echo "==> building debug binaries (--quick: a smoke run, numbers mean nothing)" >&2
  cargo build --locked --workspace --all-targets >&2
  bin=$target/debug
else
  echo "==> building the dist profile (fat LTO, what images ship)" >&2
  cargo build --profile dist --locked -p edge-agent -p multimesh-federation -p multimesh-bench >&2
  bin=$target/dist
fi

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init multimesh-dp

# Ports.
BACKEND=28080 EDGE_OUT=28101 EDGE_IN=28102 HA_OUT=28201 HA_IN=28202 NG_OUT=28301 NG_OUT_H2=28303 NG_IN=28302

# Identities: one CA, sites a (ingress side) and b (egress side).
edge_pki "$bin"
for s in a b; do
  cat "$work/pki/$s-edge.pem" "$work/pki/$s-edge-key.pem" > "$work/pki/$s-bundle.pem"
done

# Backend: nginx answering "ok" (1 worker; the same for every topology).
start_backend backend "$BACKEND"

# edge-agent pair.
start_edge_pair "$bin" 8080 "$BACKEND" "$EDGE_IN" "$EDGE_OUT"

# HAProxy pair: HTTP/2 over mTLS between them.
cat > "$work/haproxy-b.cfg" <<EOF
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend egress
  bind 127.0.0.1:$HA_OUT
  default_backend peer
backend peer
  server a 127.0.0.1:$HA_IN ssl crt $work/pki/b-bundle.pem ca-file $work/pki/ca.pem verify required alpn h2
EOF
cat > "$work/haproxy-a.cfg" <<EOF
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend ingress
  bind 127.0.0.1:$HA_IN ssl crt $work/pki/a-bundle.pem ca-file $work/pki/ca.pem verify required alpn h2
  default_backend app
backend app
  server app 127.0.0.1:$BACKEND
EOF
start haproxy_a haproxy -f "$work/haproxy-a.cfg" -db
start haproxy_b haproxy -f "$work/haproxy-b.cfg" -db

# nginx pair: HTTP/1.1 keep-alive over mTLS (the client side cannot verify a URI-SAN-only
# certificate's name, so it checks nothing; the ingress side verifies the client chain).
nginx_conf nginx-b "  upstream peer { server 127.0.0.1:$NG_IN; keepalive 256; }
  server {
    listen 127.0.0.1:$NG_OUT; listen 127.0.0.1:$NG_OUT_H2 http2;
    location / {
      proxy_pass https://peer; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_certificate $work/pki/b-edge.pem; proxy_ssl_certificate_key $work/pki/b-edge-key.pem;
      proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.3;
    }
  }" 2
nginx_conf nginx-a "  upstream app { server 127.0.0.1:$BACKEND; keepalive 256; }
  server {
    listen 127.0.0.1:$NG_IN ssl;
    ssl_certificate $work/pki/a-edge.pem; ssl_certificate_key $work/pki/a-edge-key.pem;
    ssl_client_certificate $work/pki/ca.pem; ssl_verify_client on; ssl_protocols TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }" 2
start nginx_a nginx -p "$work/nginx-a" -c "$work/nginx-a/nginx.conf" -g 'daemon off;'
start nginx_b nginx -p "$work/nginx-b" -c "$work/nginx-b/nginx.conf" -g 'daemon off;'

for p in $BACKEND $EDGE_OUT $EDGE_IN $HA_OUT $HA_IN $NG_OUT $NG_OUT_H2 $NG_IN; do wait_port "$p"; done
# Every path answers before anything is measured.
for p in $BACKEND $EDGE_OUT $HA_OUT $NG_OUT; do
  out=$(curl -s --max-time 5 -H "$DEST" "http://127.0.0.1:$p/") || true
  [ "$out" = "ok" ] || { echo "path via port $p does not answer: '$out'" >&2; cat "$work"/*.out >&2; exit 1; }
done

# All PIDs of a topology's proxies (nginx: master and workers).
proc_tree() { echo "$1"; pgrep -P "$1" || true; }
# The pid_* variables are set by start() through eval.
# shellcheck disable=SC2154
proxy_pids() {
  case $1 in
    direct) ;;
    edge) proc_tree "$pid_edge_a"; proc_tree "$pid_edge_b" ;;
    haproxy) proc_tree "$pid_haproxy_a"; proc_tree "$pid_haproxy_b" ;;
    nginx) proc_tree "$pid_nginx_a"; proc_tree "$pid_nginx_b" ;;
  esac
}
cpu_ticks() { # sum of utime+stime over pids
  local t=0
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
ctx_switches() { # voluntary + involuntary context switches of every thread of the pids
  local t=0
  for p in "$@"; do
    [ -d "/proc/$p/task" ] || continue
    t=$((t + $(cat "/proc/$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}')))
  done
  echo "$t"
}
peak_rss_kb() {
  local t=0
  for p in "$@"; do
    [ -r "/proc/$p/status" ] || continue
    t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}
# System calls the given PIDs make over the next $1 seconds (prints nothing when perf cannot
# count them: not installed, or not allowed).
sys_count() {
  local secs=$1; shift
  { [ $# -gt 0 ] && command -v perf >/dev/null; } || return 0
  local list; list=$(IFS=,; echo "$*")
  perf stat -x, -e raw_syscalls:sys_enter -p "$list" -- sleep "$secs" 2>&1 >/dev/null |
    awk -F, '/raw_syscalls/ && $1 ~ /^[0-9]+$/ {print $1}'
}
port_h1() { case $1 in direct) echo $BACKEND ;; edge) echo $EDGE_OUT ;; haproxy) echo $HA_OUT ;; nginx) echo $NG_OUT ;; esac; }
port_h2() { case $1 in direct) echo none ;; edge) echo $EDGE_OUT ;; haproxy) echo $HA_OUT ;; nginx) echo $NG_OUT_H2 ;; esac; }
hz=$(getconf CLK_TCK)

results="$work/results.jsonl"
: > "$results"
echo "==> machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ); $runs runs of ${seconds}s; fixed rate $rate/s" >&2
for run in $(seq 1 "$runs"); do
  for topo in direct edge haproxy nginx; do
    mapfile -t pp < <(proxy_pids "$topo")
    # HTTP/1.1 max throughput (wrk).
    c0=$(cpu_ticks "${pp[@]}"); x0=$(ctx_switches "${pp[@]}")
    sys_count "$seconds" "${pp[@]}" > "$work/sys_h1" &
    wrk_out=$(wrk -t1 -c64 -d"${seconds}s" --latency -H "$DEST" "http://127.0.0.1:$(port_h1 "$topo")/")
    wait $! || true
    c1=$(cpu_ticks "${pp[@]}"); x1=$(ctx_switches "${pp[@]}")
    h1_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$wrk_out")
    h1_reqs=$(awk '/requests in/ {print $1}' <<<"$wrk_out")
    h1_errors=$(awk '/Non-2xx|Socket errors/ {n++} END {print n+0}' <<<"$wrk_out")
    # h2c max throughput (h2load). The direct backend has no h2c listener.
    h2_rps=null h2_reqs=0 c2=$c1 c3=$c1 x2=$x1 x3=$x1
    : > "$work/sys_h2"
    if [ "$(port_h2 "$topo")" != none ]; then
      c2=$(cpu_ticks "${pp[@]}"); x2=$(ctx_switches "${pp[@]}")
      sys_count "$seconds" "${pp[@]}" > "$work/sys_h2" &
      h2_out=$(h2load -c16 -m32 -t1 -D"$seconds" -H "$DEST" "http://127.0.0.1:$(port_h2 "$topo")/" 2>&1)
      wait $! || true
      c3=$(cpu_ticks "${pp[@]}"); x3=$(ctx_switches "${pp[@]}")
      h2_rps=$(awk '/^finished in/ {gsub(",","",$4); print $4}' <<<"$h2_out")
      h2_reqs=$(awk '/^requests:/ {print $8}' <<<"$h2_out")
    fi
    # Latency at a fixed rate (HTTP/1.1 and h2c).
    lat_h1=$("$bin/loadgen" --target "127.0.0.1:$(port_h1 "$topo")" --header "$DEST" --rate "$rate" --duration "$seconds" --connections 64)
    lat_h2=null
    if [ "$(port_h2 "$topo")" != none ]; then
      lat_h2=$("$bin/loadgen" --h2 --target "127.0.0.1:$(port_h2 "$topo")" --header "$DEST" --rate "$rate" --duration "$seconds" --connections 4)
    fi
    rss=$(peak_rss_kb "${pp[@]}")
    sys_h1=$(cat "$work/sys_h1"); sys_h2=$(cat "$work/sys_h2")
    printf '{"run":%s,"topology":"%s","h1_rps":%s,"h1_requests":%s,"h1_error_lines":%s,"h1_cpu_s":%s,"h1_syscalls":%s,"h1_ctx":%s,"h2_rps":%s,"h2_requests":%s,"h2_cpu_s":%s,"h2_syscalls":%s,"h2_ctx":%s,"lat_h1":%s,"lat_h2":%s,"peak_rss_kb":%s}\n' \
      "$run" "$topo" "$h1_rps" "${h1_reqs:-0}" "$h1_errors" "$(awk "BEGIN {print ($c1-$c0)/$hz}")" "${sys_h1:-null}" "$((x1 - x0))" \
      "$h2_rps" "${h2_reqs:-0}" "$(awk "BEGIN {print ($c3-$c2)/$hz}")" "${sys_h2:-null}" "$((x3 - x2))" "$lat_h1" "$lat_h2" "$rss" >> "$results"
    echo "    run $run $topo: h1 ${h1_rps} rps, h2 ${h2_rps} rps" >&2
  done
done
mkdir -p bench/results
python3 bench/data_plane_report.py "$results" bench/results/data-plane.json "$quick" "$seconds"
