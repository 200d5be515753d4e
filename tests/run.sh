#!/usr/bin/env bash
# Runs every test: unit tests and the integration binary (golden files, real
# openssl, systemd-analyze and etcd-server), as root on a Debian machine.
# Ends with one summary line: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets 2>&1 | tee "$log" || status=$?
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
echo "tests: $passed passed, $failed failed"
exit "$status"
