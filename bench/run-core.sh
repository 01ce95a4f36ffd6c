#!/usr/bin/env bash
# The consistent core's benchmark: Cella (`cella up`) and etcd side by side on this machine.
#
#   bench/run-core.sh              # Cella and etcd
#   bench/run-core.sh --etcd-only  # etcd alone (to check the setup while Cella is not ready)
#
# Builds cella (dist profile), starts `cella up` and etcd (bench/peers/etcd.sh) on free ports
# with fresh data dirs, runs the five core workloads with `cella bench` against both,
# appends the results to bench/results/core-DATE.md, and stops both servers by PID.
# Every level is bounded by DURATION and COUNT.
#
# Environment: DURATION (10s), COUNT (1000000, per level), CLIENTS (1,64),
# WATCH_CLIENTS (1,64,1000: watchers for watch-fanout), OUT (the result file),
# BENCH_CMD (the benchmark client; default: the built `cella bench`).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
etcd_only=false
case ${1:-} in
--etcd-only) etcd_only=true ;;
"") ;;
*)
    echo "usage: $0 [--etcd-only]" >&2
    exit 2
    ;;
esac

duration=${DURATION:-10s}
count=${COUNT:-1000000}
clients=${CLIENTS:-1,64}
watch_clients=${WATCH_CLIENTS:-1,64,1000}
out=${OUT:-$root/bench/results/core-$(date -u +%Y-%m-%d).md}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints a port p such that p and p+1 are both free, searching upwards from $1.
free_port_pair() {
    local p=$1
    while port_in_use "$p" || port_in_use $((p + 1)); do
        p=$((p + 2))
    done
    echo "$p"
}

cella=
if ! $etcd_only || [[ -z ${BENCH_CMD:-} ]]; then
    echo "building cella (dist profile)" >&2
    cargo build --profile dist -p cella-cli
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
    cella=$target_dir/dist/cella
fi
read -r -a bench_cmd <<<"${BENCH_CMD:-$cella bench}"

work=$(mktemp -d "${TMPDIR:-/tmp}/cella-bench-core.XXXXXX")
# etcd.sh keeps its pid file here, so stop finds exactly the etcd this run started.
export CELLA_BENCH_STATE=$work/etcd-state
cella_pid=
etcd_port=

cleanup() {
    if [[ -n $cella_pid ]] && kill -0 "$cella_pid" 2>/dev/null; then
        kill -TERM "$cella_pid"
        for _ in $(seq 100); do
            kill -0 "$cella_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$cella_pid" 2>/dev/null && kill -KILL "$cella_pid"
        wait "$cella_pid" 2>/dev/null || true
    fi
    [[ -n $etcd_port ]] && "$root/bench/peers/etcd.sh" stop "$etcd_port" || true
    rm -rf "$work"
}
trap cleanup EXIT

base=$((20000 + RANDOM % 20000))
targets=()
if ! $etcd_only; then
    cella_port=$(free_port_pair "$base")
    "$cella" up --listen "127.0.0.1:$cella_port" --data-dir "$work/cella-data" \
        >"$work/cella.log" 2>&1 </dev/null &
    cella_pid=$!
    for i in $(seq 300); do
        port_in_use "$cella_port" && break
        if ! kill -0 "$cella_pid" 2>/dev/null || ((i == 300)); then
            echo "cella up did not start listening on $cella_port; its log:" >&2
            cat "$work/cella.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "cella up on 127.0.0.1:$cella_port (pid $cella_pid)" >&2
    targets+=("cella=127.0.0.1:$cella_port")
fi

etcd_port=$(free_port_pair $((base + 100)))
"$root/bench/peers/etcd.sh" start "$etcd_port"
targets+=("etcd=127.0.0.1:$etcd_port")
target_list=$(
    IFS=,
    echo "${targets[*]}"
)

if [[ ! -s $out ]]; then
    mkdir -p "$(dirname "$out")"
    printf '# Core benchmark results\n\nProduced by `bench/run-core.sh`; format described in `bench/results/README.md`.\n\n' >"$out"
fi

for workload in kv-put kv-get txn-cas lease-keepalive watch-fanout; do
    levels=$clients
    [[ $workload == watch-fanout ]] && levels=$watch_clients
    "${bench_cmd[@]}" "$workload" --targets "$target_list" --clients "$levels" \
        --duration "$duration" --count "$count" --out "$out"
done
echo "results appended to $out" >&2
