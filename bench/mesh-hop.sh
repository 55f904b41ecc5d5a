#!/usr/bin/env bash
# Mesh-hop benchmark: what a real mesh proxy in front of the edge pair adds to a cross-site
# call. Two paths to the same backend, measured alternately in one run, on loopback:
#
#   edge        client -> edge-agent b (egress) -> mTLS -> edge-agent a (ingress) -> nginx
#   istio+edge  client -> the caller's Envoy sidecar -> edge-agent b -> mTLS -> edge-agent a
#               -> nginx
#
# The sidecar is upstream istio-agent running upstream Envoy 1.40 (2 worker threads), with its
# certificate from, and its configuration pushed by, upstream istiod running against a real API
# server (scripts/kube-testenv.sh, scripts/istio-testenv.sh). Envoy routes the call by the
# import federationd writes for Istio (a ServiceEntry at the edge agent's egress, STATIC, and a
# DestinationRule with TLS DISABLE) and a Sidecar resource binding its listener on
# 127.0.0.1 (interception mode NONE: no iptables). Each agent runs one data-plane thread per
# core (2 here).
#
# Latency at a fixed rate with bench's `loadgen` (HTTP/1.1, open loop, from each request's
# scheduled time), p50 and p99 per path per run; the table gives the median over runs and the
# added latency of the Envoy hop (istio+edge - edge, per run, median). Writes
# bench/results/mesh-hop.json.
#
#   bash bench/mesh-hop.sh [--runs N] [--seconds S] [--rate R] [--quick]
#
# Needs: nginx, curl, openssl (installed with apt-get when missing), Go >= 1.26 for istiod and
# kube-apiserver (built once and cached by the testenv scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5 seconds=10 rate=1000 quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --quick) quick=1; runs=1; seconds=2; rate=200; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
need=()
for t in nginx:nginx-light curl:curl openssl:openssl; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
fi
if [ "$quick" = 1 ]; then
  echo "==> building debug binaries (--quick: a smoke run, numbers mean nothing)" >&2
  cargo build --locked --workspace --all-targets >&2
  bin=$target/debug
else
  echo "==> building the dist profile (fat LTO, what images ship)" >&2
  cargo build --profile dist --locked -p edge-agent -p multimesh-federation -p multimesh-bench >&2
  bin=$target/dist
fi
bash scripts/kube-testenv.sh install >&2
bash scripts/istio-testenv.sh install >&2
eval "$(bash scripts/istio-testenv.sh paths)"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_init multimesh-mesh-hop
kube="$work/kube"
stop_envs() {
  bash scripts/istio-testenv.sh stop "$kube" 2>/dev/null || true
  bash scripts/kube-testenv.sh stop "$kube" 2>/dev/null || true
  bench_cleanup
}
trap stop_envs EXIT

# Ports. SVC is the service port callers use (and the port of the caller's Envoy listener).
BACKEND=28480 EDGE_OUT=28481 EDGE_IN=28482 SVC=28483 ADMIN=28484 STATUS=28485
HOST="payment.shop.svc.clusterset.local:$SVC"

# The edge pair (as bench/data-plane.sh, with the service on port $SVC).
edge_pki "$bin"
start_backend backend "$BACKEND"
start_edge_pair "$bin" "$SVC" "$BACKEND" "$EDGE_IN" "$EDGE_OUT"

# Site b's cluster: a real API server and istiod.
echo "==> API server and istiod" >&2
MULTIMESH_KUBE_PORT_BASE=${MULTIMESH_KUBE_PORT_BASE:-28400} bash scripts/kube-testenv.sh start "$kube" b >&2
url=$(sed -n 's/^URL=//p' "$kube/b/env")
token=$(sed -n 's/^TOKEN=//p' "$kube/b/env")
api() { curl -fsS --cacert "$kube/pki/ca.crt" -H "Authorization: Bearer $token" "$@"; }
# apply PATH < BODY: server-side apply of one object (YAML or JSON) at PATH.
apply() {
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' \
    "$url$1?fieldManager=bench&force=true" --data-binary @- >/dev/null
}
# The Istio CRDs, from the pinned istio.io/istio module (one request per document).
crds="$(go env GOMODCACHE)/istio.io/istio@$(grep -oE 'istio.io/istio v[^ ]+' tools/istio/go.mod | cut -d' ' -f2)/manifests/charts/base/files/crd-all.gen.yaml"
[ -f "$crds" ] || (cd tools/istio && go mod download istio.io/istio)
awk -v dir="$work/crds" 'BEGIN {n = 0; system("mkdir -p " dir)} /^---/ {n++; next} {print > (dir "/" n ".yaml")}' "$crds"
for f in "$work"/crds/*.yaml; do
  name=$(awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit}' "$f")
  [ -n "$name" ] || continue
  apply "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name" < "$f"
done
for _ in $(seq 1 100); do
  api "$url/apis/networking.istio.io/v1" >/dev/null 2>&1 && break
  sleep 0.2
done
for ns in istio-system shop; do
  apply "/api/v1/namespaces/$ns" <<<"{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}"
done
bash scripts/istio-testenv.sh start "$kube" b >&2
xds=$(sed -n 's/^XDS=//p' "$kube/b/istiod.env")
cax=$(sed -n 's/^CA=//p' "$kube/b/istiod.env")
apply /api/v1/namespaces/shop/serviceaccounts/caller <<<'{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"caller","namespace":"shop"}}'
# The import as federationd writes it for Istio, toward this site's edge agent (b's egress).
apply /apis/networking.istio.io/v1/namespaces/shop/serviceentries/payment-clusterset <<<"{
  \"apiVersion\": \"networking.istio.io/v1\", \"kind\": \"ServiceEntry\",
  \"metadata\": {\"name\": \"payment-clusterset\", \"namespace\": \"shop\"},
  \"spec\": {\"hosts\": [\"payment.shop.svc.clusterset.local\"], \"location\": \"MESH_INTERNAL\",
    \"resolution\": \"STATIC\", \"endpoints\": [{\"address\": \"127.0.0.1\"}],
    \"ports\": [{\"name\": \"http\", \"number\": $SVC, \"protocol\": \"HTTP\", \"targetPort\": $EDGE_OUT}]}}"
apply /apis/networking.istio.io/v1/namespaces/shop/destinationrules/payment-clusterset <<<'{
  "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
  "metadata": {"name": "payment-clusterset", "namespace": "shop"},
  "spec": {"host": "payment.shop.svc.clusterset.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}}'
apply /apis/networking.istio.io/v1/namespaces/shop/sidecars/caller <<<"{
  \"apiVersion\": \"networking.istio.io/v1\", \"kind\": \"Sidecar\",
  \"metadata\": {\"name\": \"caller\", \"namespace\": \"shop\"},
  \"spec\": {\"workloadSelector\": {\"labels\": {\"app\": \"caller\"}},
    \"egress\": [{\"port\": {\"number\": $SVC, \"protocol\": \"HTTP\", \"name\": \"http\"},
      \"bind\": \"127.0.0.1\", \"captureMode\": \"NONE\", \"hosts\": [\"shop/*\"]}]}}"

# The caller's sidecar: a token for istiod's CA and the root certificate, as a pod gets them.
sc="$work/sidecar"
mkdir -p "$sc/var/run/secrets/istio" "$sc/var/run/secrets/tokens" "$sc/etc/istio/proxy"
api -X POST -H 'Content-Type: application/json' "$url/api/v1/namespaces/shop/serviceaccounts/caller/token" \
  --data '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["istio-ca"],"expirationSeconds":3600}}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["token"], end="")' > "$sc/var/run/secrets/tokens/istio-token"
for _ in $(seq 1 100); do
  api "$url/api/v1/namespaces/shop/configmaps/istio-ca-root-cert" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["root-cert.pem"], end="")' \
    > "$sc/var/run/secrets/istio/root-cert.pem" 2>/dev/null && break
  sleep 0.2
done
[ -s "$sc/var/run/secrets/istio/root-cert.pem" ] || { echo "istiod wrote no root certificate" >&2; exit 1; }
start sidecar env -C "$sc" POD_NAME=caller-0 POD_NAMESPACE=shop INSTANCE_IP=127.0.0.1 \
  SERVICE_ACCOUNT=caller ISTIO_META_CLUSTER_ID=b CA_ADDR="$cax" \
  ISTIO_BOOTSTRAP="$PWD/tools/istio/upstream-envoy-bootstrap.json" \
  ISTIO_META_INTERCEPTION_MODE=NONE ISTIO_META_WORKLOAD_NAME=caller \
  ISTIO_METAJSON_LABELS='{"app":"caller"}' \
  PROXY_CONFIG="{\"binaryPath\":\"$ENVOY\",\"discoveryAddress\":\"$xds\",\"controlPlaneAuthPolicy\":\"NONE\",\"proxyAdminPort\":$ADMIN,\"statusPort\":$STATUS,\"configPath\":\"./etc/istio/proxy\",\"concurrency\":2,\"drainDuration\":\"1s\",\"terminationDrainDuration\":\"1s\"}" \
  "$(dirname "$PILOT")/pilot-agent" proxy sidecar --domain shop.svc.cluster.local --proxyLogLevel warning

for p in $BACKEND $EDGE_OUT $EDGE_IN; do wait_port "$p"; done
# Both paths answer before anything is measured (the sidecar's listener comes with its config).
ok=0
for _ in $(seq 1 300); do
  out=$(curl -s --max-time 2 -H "Host: $HOST" "http://127.0.0.1:$SVC/" || true)
  if [ "$out" = "ok" ]; then ok=1; break; fi
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "the Envoy path does not answer: '$out'" >&2; tail -20 "$work/sidecar.out" >&2; exit 1; }
out=$(curl -s --max-time 5 -H "Host: $HOST" "http://127.0.0.1:$EDGE_OUT/")
[ "$out" = "ok" ] || { echo "the edge path does not answer: '$out'" >&2; exit 1; }
rejected=$(curl -s "http://127.0.0.1:$ADMIN/stats" | awk -F': ' '/update_rejected/ && $2 > 0' || true)
[ -z "$rejected" ] || { echo "Envoy rejected configuration: $rejected" >&2; exit 1; }

results="$work/results.jsonl"
: > "$results"
echo "==> machine: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ); $runs runs of ${seconds}s at $rate req/s, HTTP/1.1, 64 connections" >&2
for run in $(seq 1 "$runs"); do
  for path in edge istio+edge; do
    port=$EDGE_OUT
    [ "$path" = istio+edge ] && port=$SVC
    lat=$("$bin/loadgen" --target "127.0.0.1:$port" --host "$HOST" --rate "$rate" --duration "$seconds" --connections 64)
    printf '{"run":%s,"path":"%s","lat":%s}\n' "$run" "$path" "$lat" >> "$results"
    echo "    run $run $path: $lat" >&2
  done
done

mkdir -p bench/results
python3 - "$results" "$rate" "$seconds" "$runs" "$quick" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rate, seconds, runs = sys.argv[2], sys.argv[3], sys.argv[4]
by = {}
for r in rows:
    by.setdefault(r["path"], []).append(r)
def med(path, k):
    return statistics.median(r["lat"][k] for r in by[path])
added = {k: statistics.median(a["lat"][k] - b["lat"][k] for a, b in zip(by["istio+edge"], by["edge"])) for k in ("p50_us", "p99_us")}
errors = sum(r["lat"]["errors"] for r in rows)
out = {"quick": sys.argv[5] == "1", "rate": int(rate), "seconds": int(seconds), "runs": int(runs), "errors": errors,
       "paths": {p: {"p50_us": med(p, "p50_us"), "p99_us": med(p, "p99_us")} for p in by},
       "added_by_envoy_us": added, "raw": rows}
json.dump(out, open("bench/results/mesh-hop.json", "w"), indent=1)
print(f"| path | p50 | p99 | (median of {runs} runs of {seconds} s at {rate} req/s; errors: {errors}) |")
print("|---|---:|---:|---|")
for p in ("edge", "istio+edge"):
    print(f"| {p} | {med(p, 'p50_us'):.0f} µs | {med(p, 'p99_us'):.0f} µs | |")
print(f"| added by the Envoy hop (per run, median) | {added['p50_us']:+.0f} µs | {added['p99_us']:+.0f} µs | |")
PY
errors=$(python3 -c 'import json; print(json.load(open("bench/results/mesh-hop.json"))["errors"])')
[ "$errors" = 0 ] || { echo "$errors calls failed" >&2; exit 1; }
