#!/usr/bin/env bash
# The blocks' benchmarks in one go, each beside its peer where it has one: registry and
# config vs rnacos, RPC stack and sidecar hop (beside nginx), locks vs etcd, ids, broker vs
# NATS JetStream and RabbitMQ. Uses an existing build of the dist profile (target/dist/cella;
# build it first with `cargo build --profile dist -p cella-cli`), starts `cella up` and the
# peers (bench/peers/*.sh) on fixed loopback ports with fresh data dirs, appends every result
# to bench/results/<block>-DATE.md, and stops exactly the processes it started.
#
#   bench/run-blocks.sh [BLOCK...]   # blocks: config registry rpc lock idgen mq (default: all)
#
# Environment: DURATION (5s per level), ROUNDS (5: turns per level in side-by-side ratios).
set -euo pipefail
cd "$(dirname "$0")/.."

cella=target/dist/cella
[[ -x $cella ]] || { echo "build first: cargo build --profile dist -p cella-cli" >&2; exit 2; }
duration=${DURATION:-5s}
day=$(date -u +%Y-%m-%d)
blocks=("$@")
((${#blocks[@]})) || blocks=(config registry rpc lock idgen mq)

data=$(mktemp -d /tmp/cella-run-blocks.XXXXXX)
$cella up --listen 127.0.0.1:27270 --data-dir "$data/cella" >"$data/cella.log" 2>&1 &
cella_pid=$!
peers=()
stop_all() {
    for p in "${peers[@]}"; do bench/peers/${p%:*}.sh stop "${p#*:}" || true; done
    kill "$cella_pid" 2>/dev/null && wait "$cella_pid" 2>/dev/null || true
    rm -rf "$data"
}
trap stop_all EXIT
peer() {
    [[ " ${peers[*]} " == *" $1:$2 "* ]] && return # started by an earlier block
    bench/peers/$1.sh start "$2" >/dev/null
    peers+=("$1:$2")
}
for _ in $(seq 100); do curl -sf 127.0.0.1:27270/readyz >/dev/null && break; sleep 0.1; done

b() { $cella bench "$@" --duration "$duration"; }
# Side-by-side ratios at one client swing by ±10% between runs on a shared 2-core machine;
# alternating the targets in rounds within a level (--rounds) steadies them.
rounds=(--rounds "${ROUNDS:-5}")
cella_t=cella=127.0.0.1:27270
for block in "${blocks[@]}"; do
    out=bench/results/$block-$day.md
    case $block in
    config)
        peer rnacos 28870
        b config-publish-nacos --targets $cella_t,rnacos=127.0.0.1:28870 --baseline rnacos --clients 1,16 "${rounds[@]}" --out "$out"
        b config-read-nacos --targets $cella_t,rnacos=127.0.0.1:28870 --baseline rnacos --clients 1,16 --key-space 1000 "${rounds[@]}" --out "$out"
        b config-push --targets $cella_t --clients 1000 --rate 5 --server-pid "$cella_pid" --out "$out"
        b config-push --targets $cella_t --clients 10000 --rate 2 --server-pid "$cella_pid" --out "$out"
        ;;
    registry)
        peer rnacos 28870
        b registry-register --targets $cella_t,rnacos=127.0.0.1:28870 --clients 1,16 "${rounds[@]}" --out "$out"
        b registry-heartbeat --targets $cella_t,rnacos=127.0.0.1:28870 --clients 1,16 "${rounds[@]}" --out "$out"
        b registry-push --targets $cella_t --clients 1000 --rate 10 --out "$out"
        b registry-heartbeat-grpc --targets $cella_t --instances 100000 --beat-batch 100 --rate 200 --clients 4 --server-pid "$cella_pid" --out "$out"
        ;;
    rpc)
        b rpc-overhead --targets $cella_t --clients 1,16 "${rounds[@]}" --out "$out"
        # nginx forwards 28180 to the bench's echo app on 28181: a reference for the hop.
        peer nginx 28180
        b sidecar-hop --targets $cella_t --clients 1,16 --app-port 28181 --proxies nginx=127.0.0.1:28180 "${rounds[@]}" --out "$out"
        ;;
    lock)
        peer etcd 27390
        # 64 clients: near both servers' peak cycles/s on two cores (SPEC §4 compares cycles/s).
        b lock-cycle --targets $cella_t,etcd=127.0.0.1:27390 --clients 1,16,64 "${rounds[@]}" --out "$out"
        b lock-cycle --one-lock --targets $cella_t,etcd=127.0.0.1:27390 --clients 16 --out "$out"
        ;;
    idgen)
        b id-single --targets $cella_t --clients 1,64 --out "$out"
        b id-batch --targets $cella_t --clients 1,4 --out "$out"
        ;;
    mq)
        peer nats 24222
        peer rabbitmq 25672
        mq_t=$cella_t,nats=nats://127.0.0.1:24222,rabbitmq=amqp://127.0.0.1:25672
        b mq-produce --flush sync --targets $mq_t --baseline rabbitmq --clients 1,64 --out "$out"
        b mq-produce --flush async --targets $mq_t --baseline rabbitmq --clients 1,64 --out "$out"
        b mq-produce --flush sync --batch 64 --targets $mq_t --baseline rabbitmq --clients 1,16 --out "$out"
        b mq-produce --flush async --batch 64 --targets $mq_t --baseline rabbitmq --clients 1,16 --out "$out"
        b mq-consume --flush async --targets $mq_t --baseline rabbitmq --clients 4 --backlog 50000 --out "$out"
        # End to end at about half of Cella's one-message-per-send peak at 64 clients
        # (sync ~66k/s, async ~110k/s on the 2-core machines), every system at the same rate.
        b mq-e2e --flush sync --targets $mq_t --baseline rabbitmq --clients 64 --consumers 4 --rate 33000 --out "$out"
        b mq-e2e --flush async --targets $mq_t --baseline rabbitmq --clients 64 --consumers 4 --rate 55000 --out "$out"
        b mq-produce --flush async --batch 256 --targets $cella_t --clients 4,16 --count 3000000 --out "$out"
        ;;
    *) echo "unknown block $block" >&2; exit 2 ;;
    esac
done
