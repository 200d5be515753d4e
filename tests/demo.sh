#!/usr/bin/env bash
# The main job end to end, offline (what README's first command runs):
# build rampart, validate the example HA inventory, create its PKI in a fresh
# state dir, render every host's hardened files, and run the CIS Kubernetes
# Benchmark v1.12 self-check on the result. (With `rampart apply`, this will go
# on to install the bundle on the local lab of real hosts.)
#
# Usage: bash tests/demo.sh [INVENTORY]     (as root on Debian: installs its packages)
set -euo pipefail
cd "$(dirname "$0")/.."
inventory=${1:-inventories/ha.yaml}
benchmark=${RAMPART_CIS_BENCHMARK:-../shared/cis-1.12/checks.json}

bash tests/deps.sh
cargo build --release --quiet
rampart=${CARGO_TARGET_DIR:-target}/release/rampart

work=$(mktemp -d /tmp/rampart-demo.XXXXXX)
chmod 700 "$work"
echo "# working in $work"
step() { printf '\n$ %s\n' "$*"; "$@"; }

age-keygen -o "$work/admin-identity.txt" 2>/dev/null
export RAMPART_IDENTITY=$work/admin-identity.txt RAMPART_STATE_DIR=$work/state

step "$rampart" check -i "$inventory"
step "$rampart" init -i "$inventory"
step "$rampart" init -i "$inventory"          # idempotent: everything reused
step "$rampart" certs list -i "$inventory"
step "$rampart" render -i "$inventory" --out "$work/bundle"
if [ -f "$benchmark" ]; then
  printf '\n$ %s\n' "$rampart cis check --bundle $work/bundle --benchmark $benchmark"
  "$rampart" cis check --bundle "$work/bundle" --benchmark "$benchmark" | tail -n 8
else
  echo "skipping the CIS self-check: no kube-bench digest at $benchmark (set RAMPART_CIS_BENCHMARK)"
fi
echo
echo "state dir (sealed): $work/state   bundle: $work/bundle   identity: $work/admin-identity.txt"
