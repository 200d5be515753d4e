#!/usr/bin/env bash
# Benchmark: `rampart init` + `rampart render` of a 1,000-node inventory
# (3 control-plane, 3 dedicated etcd members, 994 workers = 1,000 hosts).
# Target (issue 2): ≤ 1.5 s wall, ≤ 200 MB peak RSS on a 2-core machine.
#
# Usage: [BENCH_DIR=/dev/shm] bash tests/bench/init-render.sh [RUNS]   (release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
# BENCH_DIR picks the file system (e.g. /dev/shm to leave the disk out).
work=$(mktemp -d "${BENCH_DIR:-/tmp}/rampart-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/rampart

# 3 control plane, 3 etcd, 994 workers: 1,000 hosts on 10.20.0.0/16.
inv=$work/inventory.yaml
{
  cat <<YAML
cluster:
  name: bench
  kubernetesVersion: "1.34.1"
  apiEndpoint: "api.bench.internal:6443"
  nodeNetwork: 10.20.0.0/16
  podCidr: 10.128.0.0/14
hosts:
YAML
  for i in 1 2 3; do printf '  - {name: cp%d, address: 10.20.0.%d, roles: [control-plane]}\n' "$i" "$((10 + i))"; done
  for i in 1 2 3; do printf '  - {name: etcd%d, address: 10.20.0.%d, roles: [etcd]}\n' "$i" "$((20 + i))"; done
  for i in $(seq 1 994); do printf '  - {name: w%d, address: 10.20.%d.%d, roles: [worker]}\n' "$i" "$((1 + i / 250))" "$((1 + i % 250))"; done
} > "$inv"

age-keygen -o "$work/id.txt" 2>/dev/null
export RAMPART_IDENTITY=$work/id.txt

measure() { # label, command...: prints "label wall_s max_rss_mb"
  local label=$1; shift
  if ! /usr/bin/time -f "%e %M" -o "$work/time" "$@" > /dev/null 2> "$work/err"; then
    echo "$label failed:" >&2; cat "$work/err" >&2; exit 1
  fi
  read -r wall rss < "$work/time"
  printf '%s %s %d\n' "$label" "$wall" "$((rss / 1024))"
}

echo "run  init_s  init_MB  render_s  render_MB  total_s"
for r in $(seq 1 "$runs"); do
  rm -rf "$work/state" "$work/out"
  read -r _ iw im < <(measure init "$bin" init -i "$inv" --state-dir "$work/state")
  read -r _ rw rm_ < <(measure render "$bin" render -i "$inv" --state-dir "$work/state" --out "$work/out")
  printf '%-4s %-7s %-8s %-9s %-10s %s\n' "$r" "$iw" "$im" "$rw" "$rm_" "$(awk -v a="$iw" -v b="$rw" 'BEGIN{print a+b}')"
done
# A re-run of init on existing state (everything reused) is the everyday case:
read -r _ iw im < <(measure init-again "$bin" init -i "$inv" --state-dir "$work/state")
echo "init on existing state: ${iw} s, ${im} MB"
echo "files rendered: $(find "$work/out" -type f | wc -l) in $(ls "$work/out" | wc -l) hosts"
