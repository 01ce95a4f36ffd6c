#!/usr/bin/env bash
# Release smoke: every Cella-only workload against a fresh `cella up` of the dist build,
# at 2, 16 and 64 clients for a couple of seconds each. Fails if any call errs, the node logs
# a panic, or it does not stop cleanly. Some races open only at a release build's timing (a
# batching-task panic under 16 concurrent writers never showed in debug builds, so not in the
# test suite); run this after changes to the core's hot paths. Records nothing.
#
#   bench/smoke.sh   # needs target/dist/cella (cargo build --profile dist -p cella-cli), or BINARY=PATH
set -euo pipefail
cd "$(dirname "$0")/.."

cella=${BINARY:-target/dist/cella}
[[ -x $cella ]] || { echo "build first: cargo build --profile dist -p cella-cli" >&2; exit 2; }
port=${PORT:-27280}
data=$(mktemp -d /tmp/cella-smoke.XXXXXX)
$cella up --listen 127.0.0.1:$port --data-dir "$data/node" >"$data/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done

failed=0
run() { # bench arguments...; prints the summary lines and counts the ones with errors
    local out
    out=$($cella bench "$@" --targets cella=127.0.0.1:$port --duration 2s --out "$data/results.md" 2>&1) || {
        echo "FAILED: cella bench $*"; echo "$out" | tail -5; failed=1; return; }
    while read -r line; do
        echo "  $line"
        [[ $line == *" 0 errors" ]] || failed=1
    done < <(grep -E ' ops/s, .* errors$' <<<"$out")
}
for workload in kv-put kv-get txn-cas lease-keepalive lock-cycle id-single id-batch config-read \
    config-publish-nacos config-read-nacos registry-register registry-heartbeat mq-produce mq-consume; do
    run "$workload" --clients 2,16,64 --warmup 0s
done
run lock-cycle --one-lock --clients 16
run watch-fanout --clients 100
run config-push --clients 200 --rate 5
run registry-push --clients 200 --rate 10
run mq-e2e --clients 16 --consumers 4 --rate 2000

if grep -q panicked "$data/node.log"; then
    echo "the node panicked:"; grep -m3 -A3 panicked "$data/node.log"; failed=1
fi
curl -sf 127.0.0.1:$port/healthz >/dev/null || { echo "/healthz is not 200"; failed=1; }
kill $node
if ! wait $node; then echo "the node did not stop cleanly"; failed=1; fi
trap 'rm -rf "$data"' EXIT
((failed == 0)) && echo "smoke: every call answered, no panic, clean stop"
exit $failed
