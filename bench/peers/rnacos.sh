#!/usr/bin/env bash
# Starts and stops rnacos (the Rust Nacos server) to benchmark Cella's Nacos-compatible APIs
# against.
#
#   bench/peers/rnacos.sh start [PORT]   # HTTP port PORT (default 8848), gRPC PORT+1000
#   bench/peers/rnacos.sh stop  [PORT]
#
# start installs rnacos with `cargo install --locked rnacos` into ${RNACOS_ROOT:-~/.cargo}
# if it is missing, runs it on 127.0.0.1 with a fresh data dir under a temp dir (its
# console off), waits until its naming API answers, and records its PID. stop kills
# exactly that PID (TERM, then KILL after 10 s) and removes the data dir.
#
# State lives in ${CELLA_BENCH_STATE:-/tmp/cella-bench}/rnacos-PORT.{pid,dir,log}.
set -euo pipefail

name=rnacos
# shellcheck source=bench/peers/common.sh
source "$(dirname "$0")/common.sh"

peer_args 8848 1000 "$@"
root=${RNACOS_ROOT:-$HOME/.cargo}

rnacos_bin() {
    if command -v rnacos >/dev/null; then command -v rnacos; else echo "$root/bin/rnacos"; fi
}

install_rnacos() {
    [[ -x $(rnacos_bin) ]] && return
    echo "rnacos not found; installing it with cargo install (a few minutes)" >&2
    cargo install --locked --root "$root" rnacos
}

# True when rnacos on $port answers the naming API.
healthy() {
    local reply
    reply=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'GET /nacos/v1/ns/service/list?pageNo=1&pageSize=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        timeout 2 cat <&3
    ) || return 1
    [[ $reply == *'"count"'* ]]
}

# Prints the PID in the pid file if that process is still the rnacos we started.
our_pid() {
    [[ -f $pidfile && -f $dirfile ]] || return 1
    local pid
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/environ ]] || return 1
    tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "RNACOS_CONFIG_DB_DIR=$(<"$dirfile")/db" || return 1
    echo "$pid"
}

start() {
    install_rnacos
    mkdir -p "$state"
    refuse_if_running
    local dir
    dir=$(make_data_dir)
    (
        cd "$dir"
        RNACOS_HTTP_PORT=$port RNACOS_GRPC_PORT=$((port + 1000)) RNACOS_HTTP_CONSOLE_PORT=0 \
            RNACOS_CONFIG_DB_DIR="$dir/db" RNACOS_ENABLE_NO_AUTH_CONSOLE=false \
            exec "$(rnacos_bin)" >"$logfile" 2>&1 </dev/null
    ) &
    local pid=$!
    echo "$pid" >"$pidfile"
    wait_healthy "$pid" "$dir"
    echo "rnacos on 127.0.0.1:$port (pid $pid, data $dir)" >&2
}

stop() { stop_ours; }

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
