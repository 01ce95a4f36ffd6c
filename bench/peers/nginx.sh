#!/usr/bin/env bash
# Starts and stops nginx as an HTTP/1.1 reverse proxy: the reference the sidecar's hop is
# measured beside (`cella bench sidecar-hop --app-port PORT+1 --proxies nginx=127.0.0.1:PORT`).
#
#   bench/peers/nginx.sh start [PORT]   # listens on PORT, forwards to 127.0.0.1:PORT+1
#   bench/peers/nginx.sh stop  [PORT]
#
# start installs Debian's nginx-light if nginx is missing and runs it in the foreground of
# its own process group with one worker (the sidecar serves on one thread too), keep-alive
# connections to the upstream, and no access log, from a config in a fresh temp dir; it
# waits until PORT accepts connections and records the master's PID. nginx does no
# discovery, balancing, retries or header rewriting beyond HTTP/1.1 proxying, so what it
# adds is close to what any proxy process costs on this machine. stop kills exactly that
# PID (TERM, then KILL after 10 s) and removes the temp dir.
#
# State lives in ${CELLA_BENCH_STATE:-/tmp/cella-bench}/nginx-PORT.{pid,dir,log}.
set -euo pipefail

name=nginx
# shellcheck source=bench/peers/common.sh
source "$(dirname "$0")/common.sh"

peer_args 28080 1 "$@"

healthy() { port_in_use "$port"; }

nginx_bin() {
    command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }
}

install_nginx() {
    nginx_bin >/dev/null && return
    echo "nginx not found; installing Debian's nginx-light" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light
    # The package starts a system-wide nginx on port 80; this script runs its own.
    if command -v systemctl >/dev/null; then systemctl stop nginx 2>/dev/null || true; fi
}

our_pid() { [[ -f $dirfile ]] && pid_with_arg "-p $(<"$dirfile")/"; }

start() {
    install_nginx
    mkdir -p "$state"
    refuse_if_running "$port"
    local dir upstream=$((port + 1))
    dir=$(make_data_dir)
    chmod 755 "$dir"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # The bench keeps each caller on one connection for the whole run.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    upstream app {
        server 127.0.0.1:$upstream;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    "$(nginx_bin)" -p "$dir/" -c "$dir/nginx.conf" >"$logfile" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    wait_healthy "$pid" "$dir"
    echo "nginx $("$(nginx_bin)" -v 2>&1 | sed 's/.*nginx\///') on 127.0.0.1:$port → 127.0.0.1:$upstream (pid $pid)" >&2
}

stop() { stop_ours; }

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
