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
