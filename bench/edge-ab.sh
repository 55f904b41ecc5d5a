#!/usr/bin/env bash
# A/B of two edge-agent builds: the benchmark's edge pair (egress b -> mTLS -> ingress a ->
# nginx backend) built twice on loopback, once per binary, loaded in alternating rounds so both
# see the same machine noise. Prints, per round, requests/s and CPU microseconds per request of
# each agent; then, per protocol, the median over rounds of the B/A ratio of each round.
#
#   bash bench/edge-ab.sh OLD_EDGE_AGENT NEW_EDGE_AGENT [--rounds N] [--seconds S]
#
# Each argument is an edge-agent binary (for example a copy of target/dist/edge-agent made
# before a change). Load: wrk -t1 -c64 (HTTP/1.1) and h2load -c16 -m32 (h2c), as in
# bench/data-plane.sh. Needs wrk, h2load, nginx and a built federationctl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
old=$(realpath "$1") new=$(realpath "$2"); shift 2
rounds=6 seconds=4
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
ctl=$target/dist/federationctl
[ -x "$ctl" ] || ctl=$target/release/federationctl
[ -x "$ctl" ] || ctl=$target/debug/federationctl
[ -x "$ctl" ] || { echo "build federationctl first (cargo build -p multimesh-federation)" >&2; exit 1; }
for t in wrk h2load nginx; do command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }; done

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init multimesh-ab

"$ctl" certs init --trust-domain bench.multimesh --out "$work/pki" >/dev/null 2>&1
for s in a b; do
  "$ctl" certs issue --site "$s" --role edge --ca-dir "$work/pki" --out "$work/pki" >/dev/null 2>&1
done

backend=28480
start_backend backend "$backend"

# pair NAME BINARY EGRESS_PORT INGRESS_PORT: starts the edge pair; sets pid_NAME_a / pid_NAME_b.
pair() {
  local name=$1 bin=$2 out=$3 in=$4
  for s in a b; do
    mkdir -p "$work/$name-$s"
    {
      if [ "$s" = a ]; then echo "ingress = \"127.0.0.1:$in\""; else echo "egress_http = \"127.0.0.1:$out\""; fi
      printf 'site = "%s"\ntrust_domain = "bench.multimesh"\n' "$s"
      printf '[tls]\nca = "%s"\ncert = "%s"\nkey = "%s"\n' "$work/pki/ca.pem" "$work/pki/$s-edge.pem" "$work/pki/$s-edge-key.pem"
      printf '[routes]\nfile = "routes.yaml"\n'
      if [ "$s" = a ]; then
        printf '[[local]]\nname = "payment"\nnamespace = "shop"\nports = [{ port = 8080, upstream = "127.0.0.1:%s" }]\n' "$backend"
      fi
    } > "$work/$name-$s/edge.toml"
  done
  echo "services: [{name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}]" > "$work/$name-a/routes.yaml"
  echo "services: [{name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a, addresses: ['127.0.0.1:$in']}]}]" > "$work/$name-b/routes.yaml"
  for s in a b; do
    start "${name}_$s" env RUST_LOG=warn "$bin" run --config "$work/$name-$s/edge.toml"
  done
}
pair A "$old" 28481 28482
pair B "$new" 28483 28484
for port in 28481 28483; do
  for _ in $(seq 1 100); do
    [ "$(curl -s -H "$DEST" "http://127.0.0.1:$port/" || true)" = ok ] && break
    sleep 0.1
  done
  [ "$(curl -s -H "$DEST" "http://127.0.0.1:$port/")" = ok ] || { echo "pair on $port does not answer" >&2; cat "$work"/*.out >&2; exit 1; }
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# round NAME PORT MODE: one load run; prints "NAME MODE rps egress_us ingress_us".
# The pid_* variables are set by pair() through eval.
# shellcheck disable=SC2154
round() {
  local name=$1 port=$2 mode=$3 pe pi e0 i0 out n rps
  eval "pe=\$pid_${name}_b pi=\$pid_${name}_a"
  e0=$(ticks "$pe"); i0=$(ticks "$pi")
  if [ "$mode" = h1 ]; then
    out=$(wrk -t1 -c64 -d"${seconds}s" -H "$DEST" "http://127.0.0.1:$port/")
    n=$(awk '/requests in/ {print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  else
    out=$(h2load -c16 -m32 -t1 -D"$seconds" -H "$DEST" "http://127.0.0.1:$port/" 2>&1)
    n=$(awk '/^requests:/ {print $8}' <<<"$out"); rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  fi
  awk -v nm="$name" -v m="$mode" -v n="$n" -v r="$rps" -v e=$(($(ticks "$pe") - e0)) -v i=$(($(ticks "$pi") - i0)) -v hz="$hz" \
    'BEGIN {printf "%s %s %.0f %.2f %.2f\n", nm, m, r, e / hz * 1e6 / n, i / hz * 1e6 / n}'
}
echo "round build protocol req/s egress_us/req ingress_us/req" >&2
for r in $(seq 1 "$rounds"); do
  for mode in h1 h2; do
    round A 28481 "$mode" | sed "s/^/$r /" | tee -a "$work/rounds" >&2
    round B 28483 "$mode" | sed "s/^/$r /" | tee -a "$work/rounds" >&2
  done
done
python3 - "$work/rounds" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, build, mode, rps, eg, ing = line.split()
    runs[(mode, r)][build] = (float(rps), float(eg), float(ing), float(eg) + float(ing))
print("protocol | B/A req/s | B/A egress CPU/req | B/A ingress CPU/req | B/A both CPU/req  (median of per-round ratios)")
for mode in ("h1", "h2"):
    pairs = [v for (m, _), v in runs.items() if m == mode and "A" in v and "B" in v]
    ratio = lambda i: statistics.median(v["B"][i] / v["A"][i] for v in pairs)
    print(f"{mode:8} | {ratio(0):9.3f} | {ratio(1):18.3f} | {ratio(2):19.3f} | {ratio(3):16.3f}")
EOF
