#!/usr/bin/env bash
# Starts and stops a single-node RabbitMQ to benchmark Cella's broker against.
#
#   bench/peers/rabbitmq.sh start [PORT]   # AMQP port PORT (default 5672)
#   bench/peers/rabbitmq.sh stop  [PORT]
#
# start installs Debian's rabbitmq-server if it is missing and runs a node of its own:
# node name benchPORT@localhost, AMQP on 127.0.0.1:PORT, Erlang distribution on
# 127.0.0.1:PORT+1, and a private epmd on 127.0.0.1:PORT+2 (started here, so the machine's
# epmd, if any, is left alone). Its data, logs, config, empty plugin list and Erlang cookie
# (HOME) live in a fresh dir under a temp dir. It waits until the AMQP port answers the
# protocol header and records both PIDs. stop sends TERM to exactly the rabbitmq-server PID
# (its script stops the node cleanly), KILLs it after 10 s if need be (and then the node's
# own PID, read from its pid file), stops the epmd it started and removes the dir.
#
# Durability: the bench declares quorum queues for sync (a publisher confirm follows the
# WAL fsync) and classic queues with transient messages for async.
#
# State lives in ${CELLA_BENCH_STATE:-/tmp/cella-bench}/rabbitmq-PORT.{pid,dir,log,epmd}.
set -euo pipefail

name=rabbitmq
# shellcheck source=bench/peers/common.sh
source "$(dirname "$0")/common.sh"

peer_args 5672 2 "$@"
epmdfile=$state/rabbitmq-$port.epmd
start_timeout=90
dist_port=$((port + 1))
epmd_port=$((port + 2))


# True when the AMQP port answers the 0-9-1 header with a method frame (Connection.Start).
healthy() {
    local reply
    reply=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'AMQP\x00\x00\x09\x01' >&3
        timeout 2 head -c 1 <&3 | od -An -tx1
    ) || return 1
    [[ $reply == *01* ]]
}

install_rabbitmq() {
    command -v rabbitmq-server >/dev/null && return
    echo "rabbitmq-server not found; installing Debian's rabbitmq-server" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
}

# True when process $1 runs with data dir $2 (its environment names the dir).
runs_in() {
    [[ $1 =~ ^[0-9]+$ && -r /proc/$1/environ ]] || return 1
    tr '\0' '\n' <"/proc/$1/environ" | grep -qx "RABBITMQ_MNESIA_BASE=$2/mnesia"
}

# Prints the PID in the pid file if that process is still the rabbitmq-server we started.
our_pid() {
    [[ -f $pidfile && -f $dirfile ]] || return 1
    local pid
    pid=$(<"$pidfile")
    runs_in "$pid" "$(<"$dirfile")" || return 1
    echo "$pid"
}

# Environment of our node (and of its private epmd).
node_env() {
    local dir=$1
    export HOME=$dir/home
    export RABBITMQ_NODENAME=bench$port@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    export RABBITMQ_DIST_PORT=$dist_port
    export RABBITMQ_MNESIA_BASE=$dir/mnesia
    export RABBITMQ_LOG_BASE=$dir/log
    export RABBITMQ_PID_FILE=$dir/node.pid
    export RABBITMQ_CONFIG_FILE=$dir/rabbitmq
    export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
    export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
    export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT=$epmd_port
}

start() {
    install_rabbitmq
    mkdir -p "$state"
    if pid=$(our_pid); then
        echo "rabbitmq on port $port is already running (pid $pid)" >&2
        exit 1
    fi
    for p in "$port" "$dist_port" "$epmd_port"; do
        if port_in_use "$p"; then
            echo "port $p is in use; pick another AMQP port (rabbitmq also needs PORT+1 and PORT+2)" >&2
            exit 1
        fi
    done
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/cella-bench-rabbitmq-$port.XXXXXX")
    echo "$dir" >"$dirfile"
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    echo '[].' >"$dir/enabled_plugins"
    echo '[].' >"$dir/advanced.config"
    : >"$dir/rabbitmq-env.conf"
    printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users = none\n' "$port" >"$dir/rabbitmq.conf"
    node_env "$dir"
    epmd -address 127.0.0.1 -port "$epmd_port" >>"$logfile" 2>&1 </dev/null &
    echo "$!" >"$epmdfile"
    /usr/lib/rabbitmq/bin/rabbitmq-server >"$logfile" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    wait_healthy "$pid" "$dir"
    echo "rabbitmq-server $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null) on 127.0.0.1:$port (pid $pid, node bench$port@localhost, data $dir)" >&2
}

# Stops the epmd this script started for $port, if it is still that epmd.
stop_epmd() {
    [[ -f $epmdfile ]] || return 0
    local epmd
    epmd=$(<"$epmdfile")
    if [[ $epmd =~ ^[0-9]+$ && -r /proc/$epmd/cmdline ]] &&
        tr '\0' ' ' <"/proc/$epmd/cmdline" | grep -q -- "-port $epmd_port"; then
        kill -TERM "$epmd"
    fi
    rm -f "$epmdfile"
}

stop() {
    local pid dir node=
    if ! pid=$(our_pid); then
        echo "no rabbitmq started by this script on port $port" >&2
        rm -f "$pidfile"
        stop_epmd
        return 0
    fi
    dir=$(<"$dirfile")
    [[ -f $dir/node.pid ]] && node=$(<"$dir/node.pid")
    stop_peer "$pid" "*/cella-bench-rabbitmq-$port.*"
    if [[ -n $node ]] && kill -0 "$node" 2>/dev/null && runs_in "$node" "$dir"; then
        echo "rabbitmq node (pid $node) outlived its script; killing it" >&2
        kill -KILL "$node"
    fi
    stop_epmd
}

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
