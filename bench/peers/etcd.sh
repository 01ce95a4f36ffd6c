#!/usr/bin/env bash
# Starts and stops a single-node etcd to benchmark Cella against.
#
#   bench/peers/etcd.sh start [PORT]   # client port PORT (default 2379), peer port PORT+1
#   bench/peers/etcd.sh stop  [PORT]
#
# start installs Debian's etcd-server if etcd is missing, runs etcd on 127.0.0.1 with a
# fresh data dir under a temp dir and etcd's default durability (fsync on every commit, as
# Cella does), waits until it reports healthy, and records its PID. stop kills exactly that
# PID (TERM, then KILL after 10 s) and removes the data dir. Two instances need client ports
# at least 2 apart, since each also takes PORT+1 for peer traffic.
#
# State lives in ${CELLA_BENCH_STATE:-/tmp/cella-bench}/etcd-PORT.{pid,dir,log}.
set -euo pipefail

name=etcd
# shellcheck source=bench/peers/common.sh
source "$(dirname "$0")/common.sh"

peer_args 2379 1 "$@"

# True when etcd on $port answers /health with "health":"true".
healthy() {
    local reply
    reply=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        timeout 2 cat <&3
    ) || return 1
    [[ $reply == *'"health":"true"'* ]]
}

install_etcd() {
    command -v etcd >/dev/null && return
    echo "etcd not found; installing Debian's etcd-server" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server
}

our_pid() { [[ -f $dirfile ]] && pid_with_arg "--data-dir $(<"$dirfile")/data"; }

start() {
    install_etcd
    mkdir -p "$state"
    local peer=$((port + 1)) dir
    refuse_if_running "$port" "$peer"
    dir=$(make_data_dir)
    # Default durability: no --unsafe-no-fsync. A larger backend quota keeps long put
    # runs from hitting the 2 GiB NOSPACE alarm; it does not change what is synced.
    etcd --name "bench-$port" \
        --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench-$port=http://127.0.0.1:$peer" \
        --initial-cluster-state new \
        --quota-backend-bytes 8589934592 \
        --logger zap --log-level warn \
        >"$logfile" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    wait_healthy "$pid" "$dir"
    echo "etcd $(etcd --version | sed -n 's/^etcd Version: //p') on 127.0.0.1:$port (pid $pid, data $dir)" >&2
}

stop() { stop_ours; }

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
