#!/usr/bin/env bash
# Cella's whole test suite, as README.md describes it: installs what a fresh machine lacks,
# builds the `cella` binary the process tests start, and runs every test with nextest.
# Extra arguments go to nextest (e.g. `scripts/test.sh -E 'package(cella-core)'`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo build -p cella-cli
cargo nextest run --workspace --no-fail-fast "$@"
