# Shared by the peer scripts (sourced, not run): their arguments and state files, waiting for
# a started peer, and stopping it. Each script sets $name, calls `peer_args`, and defines
# `healthy`.

usage() {
    echo "usage: $0 start|stop [PORT]" >&2
    exit 2
}

# Reads `start|stop [PORT]` (the script's arguments after $1 $2) into $action and $port
# (default $1; the peer also takes ports up to PORT+$2), and sets the state files.
peer_args() {
    local default_port=$1 highest_offset=$2
    shift 2
    action=${1:-}
    port=${2:-$default_port}
    state=${CELLA_BENCH_STATE:-/tmp/cella-bench}
    pidfile=$state/$name-$port.pid
    dirfile=$state/$name-$port.dir
    logfile=$state/$name-$port.log
    start_timeout=30
    [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port + highest_offset < 65535)) || usage
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits until `healthy` holds for the peer started as $1 with data dir $2; on death or
# timeout reports, cleans up and exits 1.
wait_healthy() {
    local pid=$1 dir=$2 waited=0
    until healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start; log: $logfile" >&2
            tail -n 20 "$logfile" >&2
            rm -f "$pidfile"
            rm -rf "$dir"
            exit 1
        fi
        if ((waited >= start_timeout * 10)); then
            echo "$name did not become healthy within ${start_timeout}s; log: $logfile" >&2
            kill "$pid" 2>/dev/null || true
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Stops PID $1 (TERM, then KILL after 10 s) and removes the data dir recorded in $dirfile
# when it matches the pattern $2.
stop_peer() {
    local pid=$1 pattern=$2
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name (pid $pid) ignored TERM for 10s; killing it" >&2
        kill -KILL "$pid"
    fi
    local dir
    dir=$(<"$dirfile")
    # shellcheck disable=SC2053 # $pattern is a glob on purpose
    [[ $dir == $pattern ]] && rm -rf "$dir"
    rm -f "$pidfile" "$dirfile"
    echo "$name on port $port stopped (pid $pid)" >&2
}

# The peer's fresh data dir (recorded in $dirfile): its name says peer and port, so `stop`
# removes only what `start` made.
make_data_dir() {
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/cella-bench-$name-$port.XXXXXX")
    echo "$dir" >"$dirfile"
    echo "$dir"
}

# Prints the PID in the pid file if that process's command line still contains $1 (so it is
# the peer this script started, not a later process with the same PID).
pid_with_arg() {
    [[ -f $pidfile && -f $dirfile ]] || return 1
    local pid
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1" || return 1
    echo "$pid"
}

# Exits when this script's peer already runs on $port or one of the ports given is taken.
refuse_if_running() {
    local pid p
    if pid=$(our_pid); then
        echo "$name on port $port is already running (pid $pid)" >&2
        exit 1
    fi
    for p in "$@"; do
        if port_in_use "$p"; then
            echo "port $p is in use; pick another PORT ($name takes PORT to PORT+$(($# - 1)))" >&2
            exit 1
        fi
    done
}

# Stops the peer this script started on $port (`our_pid`), if it still runs.
stop_ours() {
    local pid
    if ! pid=$(our_pid); then
        echo "no $name started by this script on port $port" >&2
        rm -f "$pidfile"
        return 0
    fi
    stop_peer "$pid" "*/cella-bench-$name-$port.*"
}
