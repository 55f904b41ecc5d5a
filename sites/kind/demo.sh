#!/usr/bin/env bash
# The tour-booking demo on three Kind clusters (on your machine; needs docker, kind, kubectl,
# and istioctl and the linkerd CLI for the meshes):
#   mm-a: Istio    front end, booking
#   mm-b: Linkerd  payment, notification, tour-catalog v2
#   mm-c: no mesh  tour-catalog v1, payment replica
#
#   sites/kind/demo.sh up            create clusters, install meshes, build and load images,
#                                    deploy federationd + edge agent + the app per site, link
#   sites/kind/demo.sh walkthrough   book across sites, shift a TrafficSplit 90/10 -> 50/50 ->
#                                    0/100 and measure it, stop b's edge agent (payment fails
#                                    over to c), restore it
#   sites/kind/demo.sh down          delete the clusters
#
# Options (environment): MESHES=0 skips Istio and Linkerd; WORK=DIR keeps certificates there
# (default .kind-demo). The front end is at http://localhost:8080/ once `up` is done.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${WORK:-$root/.kind-demo}
meshes=${MESHES:-1}
sites=(a b c)
images=(federationd edge-agent tours)
version=0.1.0

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
ctx() { printf 'kind-mm-%s' "$1"; }
k() { local site=$1; shift; kubectl --context "$(ctx "$site")" "$@"; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is required (see the header of $0)"
  done
}

node_ip() {
  docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "mm-$1-control-plane"
}

fill() {
  sed -e "s/@A_IP@/$(node_ip a)/g" -e "s/@B_IP@/$(node_ip b)/g" -e "s/@C_IP@/$(node_ip c)/g" "$1"
}

ctl() {
  local site=$1; shift
  k "$site" -n multimesh exec -i deploy/federationd -- federationctl --admin-socket /run/multimesh/admin.sock "$@"
}

up() {
  need docker kind kubectl
  [ "$meshes" = 1 ] && need istioctl linkerd
  for s in "${sites[@]}"; do
    if kind get clusters | grep -qx "mm-$s"; then
      say "cluster mm-$s exists"
    else
      say "creating cluster mm-$s"
      kind create cluster --config "$here/clusters/mm-$s.yaml" --wait 120s
    fi
  done
  if [ "$meshes" = 1 ]; then
    say "installing Istio on mm-a"
    istioctl install --context "$(ctx a)" --set profile=minimal -y
    say "installing Linkerd on mm-b"
    linkerd --context "$(ctx b)" install --crds | k b apply -f -
    linkerd --context "$(ctx b)" install | k b apply -f -
    linkerd --context "$(ctx b)" check --wait 300s >/dev/null
  fi
  for img in "${images[@]}"; do
    say "building image multimesh/$img:$version"
    docker build -q -f "$root/sites/Dockerfile" --target "$img" -t "multimesh/$img:$version" "$root" >/dev/null
    for s in "${sites[@]}"; do kind load docker-image "multimesh/$img:$version" --name "mm-$s"; done
  done
  say "creating a federation CA and site certificates in $work/pki"
  mkdir -p "$work/pki"
  local run=(docker run --rm --user "$(id -u):$(id -g)" -v "$work/pki:/pki" --entrypoint /usr/local/bin/federationctl "multimesh/federationd:$version")
  [ -f "$work/pki/ca.pem" ] || "${run[@]}" certs init --trust-domain multimesh.kind --out /pki
  for s in "${sites[@]}"; do
    [ -f "$work/pki/$s-edge.pem" ] || "${run[@]}" certs issue --site "$s" --ca-dir /pki --out /pki
  done
  for s in "${sites[@]}"; do
    say "deploying federationd, the edge agent and the app at site $s"
    k "$s" apply -f "$root/deploy/kubernetes/namespace.yaml" -f "$root/deploy/kubernetes/rbac.yaml"
    docker run --rm --entrypoint /usr/local/bin/federationctl "multimesh/federationd:$version" crds | k "$s" apply -f -
    for role in federation edge; do
      k "$s" -n multimesh create secret generic "multimesh-$role-tls" \
        --from-file=ca.pem="$work/pki/ca.pem" --from-file=site.pem="$work/pki/$s-$role.pem" \
        --from-file=site-key.pem="$work/pki/$s-$role-key.pem" --dry-run=client -o yaml | k "$s" apply -f -
    done
    k "$s" apply -f "$root/deploy/kubernetes/federationd.yaml" -f "$root/deploy/kubernetes/edge-agent.yaml"
    fill "$here/manifests/site-$s.yaml" | k "$s" apply -f -
    k "$s" apply -f "$here/manifests/app-$s.yaml"
    # federationd writes only where a RoleBinding lets it: the app's namespace.
    k "$s" apply -f "$root/deploy/kubernetes/rbac-namespace.yaml"
    k "$s" -n multimesh rollout restart deploy/federationd deploy/edge-agent
  done
  for s in "${sites[@]}"; do
    k "$s" -n multimesh rollout status deploy/federationd --timeout 180s
    k "$s" -n multimesh rollout status deploy/edge-agent --timeout 180s
    k "$s" -n tours wait --for=condition=available deploy --all --timeout 180s
  done
  say "waiting until site a sees every export"
  for _ in $(seq 60); do
    n=$(ctl a catalog -o json | grep -c '"name"' || true)
    [ "$n" -ge 6 ] && break
    sleep 2
  done
  ctl a catalog
  say "front end: http://localhost:8080/   (status: sites/kind/demo.sh status)"
}

book() {
  curl -fsS -X POST -H 'content-type: application/json' \
    -d '{"tour_id":"fjord-kayak","customer":"Kind guest","seats":2}' http://localhost:8080/api/bookings
}

sites_of() { grep -o '"step":"[a-z-]*","served_by":{[^}]*"site":"[a-z]*"' | sed -E 's/"step":"([a-z-]*)".*"site":"([a-z]*)"/\1@\2/' | tr '\n' ' '; }

split() {
  cat <<EOF
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: tour-catalog-rollout, namespace: tours}
spec:
  service: tour-catalog
  backends:
  - {service: tour-catalog-v1, weight: $1}
  - {service: tour-catalog-v2, weight: $2}
EOF
}

walkthrough() {
  need kubectl curl
  say "step 1: a booking at site a crosses sites"
  for _ in 1 2 3; do book | sites_of; echo; done
  say "step 2: shift tour-catalog between v1 (site c) and v2 (site b)"
  local calls=${CALLS:-1000}
  for w in "90 10" "50 50" "0 100"; do
    read -r v1 v2 <<<"$w"
    split "$v1" "$v2" | ctl a apply -f -
    sleep 1
    local n1=0 n2=0
    for _ in $(seq "$calls"); do
      case $(curl -fsS http://localhost:8080/api/tours | grep -o '"version":"v[12]"') in
        *v1*) n1=$((n1 + 1)) ;;
        *v2*) n2=$((n2 + 1)) ;;
      esac
    done
    say "configured v1 $v1% / v2 $v2% -> observed v1 $((100 * n1 / calls))% / v2 $((100 * n2 / calls))% over $calls calls"
  done
  ctl a delete-split tour-catalog -n tours
  say "step 3: stop site b's edge agent; payment fails over to c"
  k b -n multimesh scale deploy/edge-agent --replicas 0
  k b -n multimesh wait --for=delete pod -l app.kubernetes.io/name=edge-agent --timeout 60s || true
  for _ in 1 2 3 4 5; do book | sites_of; echo; done
  say "step 4: restore it"
  k b -n multimesh scale deploy/edge-agent --replicas 2
  k b -n multimesh rollout status deploy/edge-agent --timeout 120s
  for _ in 1 2 3 4 5; do book | sites_of; echo; done
}

status() {
  for s in "${sites[@]}"; do
    say "site $s"
    ctl "$s" peers
    ctl "$s" splits
  done
}

down() {
  need kind
  for s in "${sites[@]}"; do kind delete cluster --name "mm-$s"; done
}

case "${1:-}" in
  up) up ;;
  walkthrough) walkthrough ;;
  status) status ;;
  down) down ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
