#!/usr/bin/env bash
# Starts and stops a single-node NATS server with JetStream to benchmark Cella's broker against.
#
#   bench/peers/nats.sh start [PORT]   # client port PORT (default 4222)
#   bench/peers/nats.sh stop  [PORT]
#
# start installs Debian's nats-server if it is missing, runs it on 127.0.0.1 with JetStream
# on and its file store in a fresh dir under a temp dir, waits until it answers with
# JetStream enabled, and records its PID. stop kills exactly that PID (TERM, then KILL after
# 10 s) and removes the store. Durability: JetStream 2.9 acknowledges a publish once it is
# written to the file store (page cache) and fsyncs on its own interval (2 min); it has no
# per-message fsync setting, so it matches Cella's async flush, not its sync flush.
#
# State lives in ${CELLA_BENCH_STATE:-/tmp/cella-bench}/nats-PORT.{pid,dir,log}.
set -euo pipefail

name=nats
# shellcheck source=bench/peers/common.sh
source "$(dirname "$0")/common.sh"

peer_args 4222 0 "$@"

# True when the server on $port greets with an INFO line that has JetStream on.
healthy() {
    local reply
    reply=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        timeout 2 head -n 1 <&3
    ) || return 1
    [[ $reply == INFO* && $reply == *'"jetstream":true'* ]]
}

install_nats() {
    command -v nats-server >/dev/null && return
    echo "nats-server not found; installing Debian's nats-server" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server
}

our_pid() { [[ -f $dirfile ]] && pid_with_arg "--store_dir $(<"$dirfile")/store"; }

start() {
    install_nats
    mkdir -p "$state"
    refuse_if_running "$port"
    local dir
    dir=$(make_data_dir)
    nats-server --addr 127.0.0.1 --port "$port" \
        --jetstream --store_dir "$dir/store" \
        --server_name "bench-$port" \
        >"$logfile" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    wait_healthy "$pid" "$dir"
    echo "$(nats-server --version) with JetStream on 127.0.0.1:$port (pid $pid, store $dir)" >&2
}

stop() { stop_ours; }

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
