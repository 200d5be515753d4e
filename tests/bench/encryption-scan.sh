#!/usr/bin/env bash
# Benchmark: the etcd scan behind `rampart rotate encryption-key` (which key
# encrypts each value; drop-old refuses while the old key has one), on a
# real 3-member etcd, against the bare read it is built on.
#
#   0. lab up (3 hosts, [etcd, control-plane]), `rampart init`, `rampart
#      apply` without the control plane; VALUES Secrets' worth of values put
#      through host 1 as the apiserver stores them (`k8s:enc:secretbox:v1:
#      key1:` + 1 KiB), 100 puts a transaction
#   1. `rampart rotate encryption-key --dry-run` end to end (connect, lock-
#      less read of the journals, the scan on host 1, the plan), RUNS times,
#      with the admin machine's peak memory
#   2. baselines on host 1, timed there: the bare `etcdctl get /registry/
#      --prefix` of the same values into /dev/null (one response, nothing
#      parsed), and the naive count an admin would type (one unpaged
#      `get -w fields | grep -c` of the key's prefix)
#
# Usage (root; brings up its own lab and takes it down on exit):
#   [VALUES=10000] [BENCH_LAB_PREFIX=rs BENCH_LAB_NET=10.88.0] bash tests/bench/encryption-scan.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
self=$PWD/tests/bench/encryption-scan.sh
skip=start-control-plane,apply-manifests,start-nodes
etcdctl_remote="ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
 --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
 --key=/etc/kubernetes/pki/etcd/healthcheck-client.key"

sshopts=()
set_sshopts() {
    sshopts=(-i "$LAB_KEY" -o "UserKnownHostsFile=$LAB_KNOWN_HOSTS" -o BatchMode=yes
        -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=5)
}
host_ip() { jq -r ".hosts[$1].ip" "$LAB_JSON"; }
on() { local i=$1; shift; ssh "${sshopts[@]}" "root@$(host_ip "$i")" "$@"; }
# Runs stdin as a script on host I; prints its wall time measured there.
timed_on() {
    on "$1" "cat > /var/tmp/bench.sh; s=\$(date +%s%N); sh /var/tmp/bench.sh > /var/tmp/bench.out || exit 1
        e=\$(date +%s%N); awk -v n=\$((e-s)) 'BEGIN{printf \"%.2f\n\", n/1e9}'"
}

inside() {
    local runs=$1 values=$2
    set_sshopts
    local bin=$BIN w=$WORK inv=$WORK/inventory.yaml
    {
        cat <<YAML
cluster:
  name: bench
  kubernetesVersion: "1.34"
  apiEndpoint: $(jq -r '.hosts[0].cluster_ip' "$LAB_JSON"):6443
  nodeNetwork: $(jq -r '.cluster_net' "$LAB_JSON")
ssh:
  user: root
  identityFile: $LAB_KEY
  knownHostsFile: $LAB_KNOWN_HOSTS
hosts:
YAML
        jq -r '.hosts[] | "  - {name: \(.name), address: \(.cluster_ip), roles: [etcd, control-plane]}"' "$LAB_JSON"
    } > "$inv"
    age-keygen -o "$w/id.txt" 2> /dev/null
    export RAMPART_IDENTITY=$w/id.txt RAMPART_STATE_DIR=$w/state
    "$bin" init -i "$inv" > /dev/null
    "$bin" apply -i "$inv" --skip-phases "$skip" > "$w/apply.out" 2>&1 || { cat "$w/apply.out" >&2; exit 1; }

    echo "putting $values values through host 1…" >&2
    local pad
    pad=$(head -c 1024 /dev/zero | tr '\0' x)
    on 0 "b=0; while [ \$b -lt $values ]; do
        { echo; i=\$b; while [ \$i -lt \$((b+100)) ] && [ \$i -lt $values ]; do
            echo \"put /registry/secrets/bench/s-\$i \\\"k8s:enc:secretbox:v1:key1:$pad\\\"\"; i=\$((i+1)); done; echo; echo; } |
          $etcdctl_remote txn > /dev/null || exit 1
        b=\$((b+100))
      done"

    local r rt=()
    for r in $(seq 1 "$runs"); do
        /usr/bin/time -f "%e %M" -o "$w/time" "$bin" rotate encryption-key -i "$inv" --dry-run \
            --output json > "$w/plan.json" 2> "$w/plan.err" || { cat "$w/plan.err" >&2; exit 1; }
        rt+=("$(cat "$w/time")")
    done
    local found
    found=$(jq -c '.etcd' "$w/plan.json")

    local bare_s naive_s
    bare_s=$(echo "$etcdctl_remote get /registry/ --prefix > /dev/null" | timed_on 0)
    naive_s=$(echo "$etcdctl_remote get /registry/ --prefix -w fields | grep -c '^\"Value\" : \"k8s:enc:secretbox:v1:key1:'" | timed_on 0)

    echo
    echo "=== etcd scan, $values values of ~1 KiB on a 3-member etcd (nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "found: $found"
    printf '%-62s %s\n' "measurement" "wall_s (max RSS MB)"
    local x a m
    for x in "${rt[@]}"; do
        read -r a m <<< "$x"
        printf '%-62s %s (%d)\n' "rampart rotate encryption-key --dry-run (end to end)" "$a" "$((m / 1024))"
    done
    printf '%-62s %s\n' "host 1: bare etcdctl get /registry/ --prefix > /dev/null" "$bare_s"
    printf '%-62s %s\n' "host 1: one unpaged get -w fields | grep -c key1 (naive count)" "$naive_s"
}

case "${1:-}" in
    _inside) shift; inside "$@"; exit ;;
esac

runs=${1:-5}
prefix=${BENCH_LAB_PREFIX:-rs}
net=${BENCH_LAB_NET:-10.88.0}
[ "$(id -u)" = 0 ] || { echo "$0: the lab needs root" >&2; exit 1; }
state=/var/tmp/rampart-lab-$prefix
[ "$prefix" != rl ] || state=/var/tmp/rampart-lab
if [ -e "$state" ] || [ -e "/run/netns/$prefix-lab" ]; then
    echo "$0: a lab with prefix $prefix is already up; pick BENCH_LAB_PREFIX/BENCH_LAB_NET" >&2
    exit 1
fi
cargo build --release --quiet
export BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/rampart
WORK=$(mktemp -d /tmp/rampart-bench-scan.XXXXXX)
export WORK
th=(env TH_PREFIX="$prefix" TH_NET="$net" bash tests/lab/testhosts.sh)
trap '"${th[@]}" down > /dev/null 2>&1 || echo "$0: lab $prefix down failed" >&2; rm -rf "$WORK"' EXIT
"${th[@]}" up 3 > /dev/null
export LAB_JSON=$state/hosts.json
LAB_KEY=$(jq -r .ssh_key "$LAB_JSON")
LAB_KNOWN_HOSTS=$(jq -r .known_hosts "$LAB_JSON")
export LAB_KEY LAB_KNOWN_HOSTS
"${th[@]}" exec bash "$self" _inside "$runs" "${VALUES:-10000}"
