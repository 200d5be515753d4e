#!/usr/bin/env bash
# Benchmark: the backup job (`rampart agent snapshot`) against a bare
# `etcdctl snapshot save` of the same member.
# Target (backup issue): job wall time ≤ 1.3× the bare save; job RSS ≤ 64 MB
# whatever the snapshot size.
#
# A throw-away etcd on 127.0.0.5 (loopback only) with the PKI rampart generates,
# filled with SIZE_MB one-MiB values, then RUNS alternating runs of each.
#
# Usage: [SIZE_MB=256] [BENCH_DIR=/tmp] bash tests/bench/backup.sh [RUNS]   (release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
size_mb=${SIZE_MB:-256}
addr=127.0.0.5
work=$(mktemp -d "${BENCH_DIR:-/tmp}/rampart-bench-backup.XXXXXX")
etcd_pid=
cleanup() {
  # `|| true`: under set -e a failing kill/wait would skip the rm.
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/rampart

# The member's certificates, as `apply` would install them.
cat > "$work/inventory.yaml" <<YAML
cluster: {name: bench, kubernetesVersion: "1.34"}
hosts:
  - {name: b5, address: $addr, roles: [etcd, control-plane]}
YAML
age-keygen -o "$work/state-id.txt" 2>/dev/null
export RAMPART_IDENTITY=$work/state-id.txt
# (stderr: warnings about a loopback, worker-less inventory, expected here)
"$bin" init -i "$work/inventory.yaml" --state-dir "$work/state" > /dev/null 2>&1
"$bin" render -i "$work/inventory.yaml" --state-dir "$work/state" --out "$work/bundle" > /dev/null 2>&1
pki=$work/bundle/b5/etc/kubernetes/pki/etcd

etcd --name=b5 --data-dir="$work/data" \
  --listen-client-urls="https://$addr:2379" --advertise-client-urls="https://$addr:2379" \
  --listen-peer-urls="http://$addr:2380" --initial-advertise-peer-urls="http://$addr:2380" \
  --initial-cluster="b5=http://$addr:2380" --listen-metrics-urls="http://$addr:2381" \
  --cert-file="$pki/server.crt" --key-file="$pki/server.key" \
  --trusted-ca-file="$pki/ca.crt" --client-cert-auth=true \
  --logger=zap --log-outputs="$work/etcd.log" 2> /dev/null &
etcd_pid=$!

export ETCDCTL_API=3
etcdctl_tls=(etcdctl --endpoints="https://$addr:2379" --cacert="$pki/ca.crt"
  --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key")
ctl() { "${etcdctl_tls[@]}" "$@"; }
for _ in $(seq 1 100); do ctl endpoint health > /dev/null 2>&1 && break; sleep 0.2; done
ctl endpoint health > /dev/null 2>&1

echo "filling etcd with $size_mb × 1 MiB values…" >&2
for i in $(seq 1 "$size_mb"); do
  # 768 KiB of random bytes → 1 MiB of base64: incompressible, under the 1.5 MiB request limit.
  head -c 786432 /dev/urandom | base64 -w0 | ctl put "/bench/$i" > /dev/null
done

age-keygen -o "$work/backup-id.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/backup-id.txt")
cat > "$work/backup.yaml" <<YAML
cluster: bench
member: b5
etcdctl: $(command -v etcdctl)
endpoint: https://$addr:2379
cacert: $pki/ca.crt
cert: $pki/healthcheck-client.crt
key: $pki/healthcheck-client.key
dir: $work/backups
recipients: [$recipient]
retention: {count: 1}
YAML

measure() { # label, command...: prints "wall_s max_rss_mb"
  local label=$1; shift
  if ! /usr/bin/time -f "%e %M" -o "$work/time" "$@" > /dev/null 2> "$work/err"; then
    echo "$label failed:" >&2; cat "$work/err" >&2; exit 1
  fi
  read -r wall rss < "$work/time"
  printf '%s %d\n' "$wall" "$((rss / 1024))"
}
# /usr/bin/time reports the largest process of the tree (wait4): for the job,
# etcdctl's or rampart's; `-v` makes rampart print its own peak (VmHWM).
own_rss() { sed -n 's/.*peak memory \([0-9]*\) kB/\1/p' "$work/err" | awk '{printf "%d", $1/1024}'; }
# rampart's own CPU time (all its threads, not etcdctl's), also from `-v`.
own_cpu() { sed -n 's/.*cpu \([0-9.]*\) s user + \([0-9.]*\) s system/\1 \2/p' "$work/err" | awk '{printf "%.2f", $1+$2}'; }

mkdir -p "$work/bare"
# The figures mean little on a busy machine: say how busy it was (the runs'
# own processes add ≈1.5 to the 1-minute average).
echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "run  bare_s  bare_MB  job_s  job_MB  rampart_MB  rampart_cpu_s  ratio  load"
for r in $(seq 1 "$runs"); do
  rm -f "$work/bare/snap.db"
  read -r bw bm < <(measure bare "${etcdctl_tls[@]}" --command-timeout=1h snapshot save "$work/bare/snap.db")
  sleep 1 # distinct file names: the job names backups to the second
  read -r jw jm < <(measure job "$bin" -v agent snapshot --config "$work/backup.yaml")
  printf '%-4s %-7s %-8s %-6s %-7s %-11s %-14s %-6s %s\n' "$r" "$bw" "$bm" "$jw" "$jm" "$(own_rss)" \
    "$(own_cpu)" "$(awk -v a="$jw" -v b="$bw" 'BEGIN{printf "%.2f", a/b}')" "$(cut -d' ' -f1 /proc/loadavg)"
done
echo "last job's steps:"; sed -n 's/^b5: \(.*: [0-9.]* s\)$/  \1/p' "$work/err"
m=$(ls "$work"/backups/*.manifest.json)
echo "snapshot: $(stat -c %s "$work/bare/snap.db") bytes; backup: $(stat -c %s "${m%.manifest.json}.db.age") bytes"
/usr/bin/time -f "%M" -o "$work/time" "$bin" backup verify "${m%.manifest.json}.db.age" \
  --identity "$work/backup-id.txt" --scratch-dir "$work" > /dev/null
echo "verify of the same backup: max RSS $(( $(cat "$work/time") / 1024 )) MB (tree)"
