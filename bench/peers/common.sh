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
