#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, if missing:
#   etcdctl (Debian's etcd-client) for the etcd compatibility test,
#   python3-venv for the sidecar test (it installs the Dapr Python SDK into a venv),
#   cargo-nextest for the test runner.
set -euo pipefail

need_apt=()
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
