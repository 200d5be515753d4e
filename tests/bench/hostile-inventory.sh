#!/usr/bin/env bash
# Benchmark: what the worst inventories within rampart's bounds cost
# `rampart check` (release build): time and peak memory. The bounds (4 MiB,
# 64 levels of nesting, 1 MiB of alias expansion) are in src/inventory/limits.rs.
#
#   1. a 4 MiB inventory listing one role for ~700,000 times (one warning each)
#   2. nesting: a sequence 100,000 deep (refused at level 65)
#   3. aliases: a 1 MB string anchored once and aliased 1,000 times (refused)
#   4. the largest valid inventory: 10,000 hosts
#
# Usage: bash tests/bench/hostile-inventory.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/rampart
work=$(mktemp -d /tmp/rampart-hostile.XXXXXX)
trap 'rm -rf "$work"' EXIT
head='cluster: {name: t, kubernetesVersion: "1.34"}
ssh: {agent: true}'
python3 - "$work" "$head" <<'PY'
import sys
work, head = sys.argv[1], sys.argv[2]
limit = 4 << 20
roles = head + "\nhosts:\n  - name: cp1\n    address: 10.0.0.1\n    roles: [control-plane, worker"
n = (limit - len(roles) - 200) // 6
open(f"{work}/roles.yaml", "w").write(roles + ", etcd" * n + "]\n")
open(f"{work}/deep.yaml", "w").write(head + "\nx: " + "[" * 100000 + "\n")
big = "y" * 1000000
open(f"{work}/aliases.yaml", "w").write(head + f"\nbig: &a \"{big}\"\nuses: [" + ", ".join(["*a"] * 1000) + "]\n")
hosts = [f"  - {{name: n{i}, address: 10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}, roles: [{'etcd, control-plane' if i < 3 else 'worker'}]}}" for i in range(10000)]
open(f"{work}/hosts.yaml", "w").write("cluster: {name: t, kubernetesVersion: \"1.34\", apiEndpoint: \"192.168.0.10:6443\", podCidr: 10.128.0.0/9, serviceCidr: 172.20.0.0/16}\nssh: {agent: true}\nhosts:\n" + "\n".join(hosts) + "\n")
PY
printf '%-44s %9s %8s %10s %s\n' input bytes seconds "peak RSS" "exit (outcome)"
for f in roles deep aliases hosts; do
    out=$( { /usr/bin/time -f '%e %M' "$bin" check -i "$work/$f.yaml" > /dev/null 2> "$work/$f.err"; echo "rc=$?"; } 2>&1 )
    rc=${out##*rc=}
    read -r secs kib < <(tail -n 1 "$work/$f.err")
    first=$(grep -m1 -E '^(error|warning)' "$work/$f.err" | cut -c1-60 || true)
    printf '%-44s %9s %8s %8s MB %s (%s)\n' "$f.yaml" "$(stat -c %s "$work/$f.yaml")" "$secs" $((kib / 1024)) "$rc" "$first"
done
