#!/usr/bin/env bash
# Benchmark: rampart against a real Kubernetes on the 4-host lab in kubelet
# mode (hosts 1..3 [etcd, control-plane], host 4 [worker], backups on).
# Targets (issue: "A real Kubernetes in the loop"):
#   no-op re-apply ≤ 1.5 s; rolling restart of 3 apiservers ≤ 30 s with no
#   moment without a ready apiserver; restore of a live control plane ≤ 30 s.
#
#   A. without Kubernetes binaries (as CI runs: start phases skipped, no
#      artifacts): no-op re-apply; restore (etcd only)
#   B. with them (RAMPART_K8S_BIN): first apply; no-op re-apply; rolling
#      restart of the 3 apiservers (an apiserver flag changed, applied),
#      probed every 0.1 s through all three apiservers' /readyz from the
#      worker; restore of the live control plane, end to end
#
# Usage (root; brings up its own lab and takes it down on exit):
#   RAMPART_K8S_BIN=DIR [BENCH_LAB_PREFIX=rk BENCH_LAB_NET=10.84.0] bash tests/bench/k8s.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
self=$PWD/tests/bench/k8s.sh
skip=start-control-plane,apply-manifests,start-nodes

sshopts() { echo -i "$LAB_KEY" -o "UserKnownHostsFile=$LAB_KNOWN_HOSTS" -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=5; }
# shellcheck disable=SC2046 # sshopts: one word per option
on() { local ip; ip=$(jq -r ".hosts[$1].ip" "$LAB_JSON"); shift; ssh $(sshopts) -n "root@$ip" "$@"; }
nhosts() { jq '.hosts | length' "$LAB_JSON"; }

# Every host back to the image's state, pods and runtime included.
reset_hosts() {
    local i
    for i in $(seq 0 $(($(nhosts) - 1))); do
        on "$i" 'systemctl stop kubelet kube-proxy >/dev/null 2>&1; systemctl stop kubepods.slice >/dev/null 2>&1;
            systemctl kill -s KILL containerd >/dev/null 2>&1; systemctl disable --now containerd rampart-backup.timer etcd \
                kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy >/dev/null 2>&1;
            rm -rf /etc/kubernetes /var/lib/etcd /var/lib/etcd.* /var/lib/rampart /var/lib/kubelet /var/lib/kube-proxy \
                /etc/systemd/system/etcd.service /etc/systemd/system/kube-*.service /etc/systemd/system/rampart-backup.* \
                /etc/sysctl.d/90-rampart-kubelet.conf /etc/containerd/config.toml /etc/containerd/cni-bridge.conflist.tmpl \
                /etc/cni/net.d /var/lib/cni /usr/local/bin/rampart /etc/rampart /var/backups/etcd;
            ip link del cni0 >/dev/null 2>&1; systemctl daemon-reload; systemctl reset-failed; true' &
    done
    wait
}

# The lab inventory; $1: extra YAML.
inventory() {
    cat <<YAML
cluster:
  name: bench
  kubernetesVersion: "$MINOR"
  apiEndpoint: $(jq -r '.hosts[0].ip' "$LAB_JSON"):6443
  nodeNetwork: $(jq -r '.cluster_net' "$LAB_JSON")
ssh:
  user: root
  identityFile: $LAB_KEY
  knownHostsFile: $LAB_KNOWN_HOSTS
hosts:
YAML
    local i
    for i in $(seq 0 $(($(nhosts) - 1))); do
        if [ "$i" -lt 3 ]; then r="[etcd, control-plane]"; else r="[worker]"; fi
        printf '  - {name: %s, address: %s, roles: %s}\n' "$(jq -r ".hosts[$i].name" "$LAB_JSON")" \
            "$(jq -r ".hosts[$i].ip" "$LAB_JSON")" "$r"
    done
    printf 'backups:\n  recipients: [%s]\nruntime:\n  sandboxImage: rampart.lab/pause:1\n  restrictOomScoreAdj: %s\n%s' \
        "$(age-keygen -y "$WORK/backup.txt")" "$RESTRICT" "${1:-}"
}

# seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# One restore of the newest backup of host 1, end to end (verify, plan,
# stop, swap, start, every gate); prints its seconds.
restore_once() {
    local inv=$1 dir f t0 log=$WORK/restore.log
    "$BIN" backup now -i "$inv" > "$log" 2>&1 || { cat "$log" >&2; return 1; }
    dir=$WORK/pulled-$RANDOM
    "$BIN" backup pull -i "$inv" --latest --to "$dir" > "$log" 2>&1 || { cat "$log" >&2; return 1; }
    f=$(ls "$dir/$(jq -r '.hosts[0].name' "$LAB_JSON")"/*.db.age)
    t0=$(now)
    "$BIN" backup restore "$f" --identity "$WORK/backup.txt" -i "$inv" --yes > "$log" 2>&1 ||
        { cat "$log" >&2; return 1; }
    awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f\n", b - a}'
}

# Every 0.1 s, from the worker, how many of the 3 apiservers answer /readyz
# (as the worker's kubelet, whose client credential is in kubelet.conf;
# /readyz is open to every authenticated user); "t n" lines.
probe() {
    local ips
    ips=$(jq -r '.hosts[0:3][].ip' "$LAB_JSON" | tr '\n' ' ')
    on 3 "umask 077; d=\$(mktemp -d); trap 'rm -rf \$d' EXIT
        awk '/client-certificate-data/ {print \$2}' /etc/kubernetes/kubelet.conf | base64 -d > \$d/c
        awk '/client-key-data/ {print \$2}' /etc/kubernetes/kubelet.conf | base64 -d > \$d/k
        while :; do n=0; for ip in $ips; do curl -sf -m 1 --cacert /etc/kubernetes/pki/ca.crt \
        --cert \$d/c --key \$d/k https://\$ip:6443/readyz >/dev/null 2>&1 && n=\$((n+1)); done
        echo \"\$(date +%s.%N) \$n\"; sleep 0.1; done"
}

inside() {
    local runs=$1 hf=(hyperfine --style basic --export-json)
    age-keygen -o "$WORK/backup.txt" 2> /dev/null
    age-keygen -o "$WORK/id.txt" 2> /dev/null
    export RAMPART_IDENTITY=$WORK/id.txt
    # The sandbox image on every node (no registry needed for it).
    local i
    for i in $(seq 0 $(($(nhosts) - 1))); do
        # shellcheck disable=SC2046
        scp $(sshopts) -q "$WORK/pause.oci.tar" "root@$(jq -r ".hosts[$i].ip" "$LAB_JSON"):/root/"
        on "$i" 'systemctl start containerd && ctr -n k8s.io images import /root/pause.oci.tar >/dev/null && systemctl stop containerd'
    done

    echo "::: A. without Kubernetes binaries (start phases skipped)"
    inventory > "$WORK/a.yaml"
    export RAMPART_STATE_DIR=$WORK/state-a
    "$BIN" init -i "$WORK/a.yaml" > /dev/null
    "$BIN" apply -i "$WORK/a.yaml" --skip-phases "$skip" > /dev/null 2>&1
    # Some data, as a cluster has (no apiserver writes any here).
    on 0 'for i in $(seq 1 200); do ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
        --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
        --key=/etc/kubernetes/pki/etcd/healthcheck-client.key put /bench/key-$i value-$i >/dev/null; done'
    "${hf[@]}" "$WORK/a-noop.json" --runs "$runs" --warmup 1 "$BIN apply -i $WORK/a.yaml --skip-phases $skip"
    : > "$WORK/a-restore.txt"
    for i in $(seq 1 "$runs"); do restore_once "$WORK/a.yaml" >> "$WORK/a-restore.txt" || exit 1; done
    reset_hosts

    echo "::: B. with Kubernetes binaries ($K8S_BIN)"
    inventory "binaries:
  artifacts: $K8S_BIN
" > "$WORK/b.yaml"
    sed 's/^cluster:/security:\n  auditLog:\n    maxAgeDays: 31\ncluster:/' "$WORK/b.yaml" > "$WORK/b2.yaml"
    export RAMPART_STATE_DIR=$WORK/state-b
    "$BIN" init -i "$WORK/b.yaml" > /dev/null
    local t0
    t0=$(now)
    "$BIN" apply -i "$WORK/b.yaml" > /dev/null 2>&1
    awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f\n", b - a}' > "$WORK/b-first.txt"
    "${hf[@]}" "$WORK/b-noop.json" --runs "$runs" --warmup 1 "$BIN apply -i $WORK/b.yaml"
    : > "$WORK/b-rolling.txt"
    for i in $(seq 1 "$runs"); do
        local inv=$WORK/b2.yaml
        [ $((i % 2)) = 1 ] || inv=$WORK/b.yaml
        probe > "$WORK/probe-$i.txt" 2> /dev/null &
        local pp=$!
        sleep 1
        t0=$(now)
        "$BIN" apply -i "$inv" > "$WORK/rolling-$i.log" 2>&1
        local t1
        t1=$(now)
        sleep 1
        kill "$pp" 2> /dev/null; wait "$pp" 2> /dev/null || true
        grep -q 'restart kube-apiserver' "$WORK/rolling-$i.log" ||
            { echo "run $i restarted no apiserver" >&2; cat "$WORK/rolling-$i.log" >&2; exit 1; }
        # seconds, samples, samples with no ready apiserver, fewest ready
        awk -v a="$t0" -v b="$t1" '$1 >= a && $1 <= b { n++; if ($2 == 0) z++; if (min == "" || $2 < min) min = $2 }
            END { printf "%.1f %d %d %d\n", b - a, n, z + 0, min }' "$WORK/probe-$i.txt" >> "$WORK/b-rolling.txt"
    done
    "$BIN" apply -i "$WORK/b.yaml" > /dev/null 2>&1
    : > "$WORK/b-restore.txt"
    for i in $(seq 1 "$runs"); do restore_once "$WORK/b.yaml" >> "$WORK/b-restore.txt" || exit 1; done
    reset_hosts

    med() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
    hmed() { jq -r '.results[0].median' "$1" | awk '{printf "%.2f", $1}'; }
    hrange() { jq -r '.results[0] | "\(.min) \(.max)"' "$1" | awk '{printf "%.2f-%.2f", $1, $2}'; }
    echo
    echo "=== $(nhosts) hosts (3 etcd + control plane, 1 worker), Kubernetes $MINOR; nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-52s %-22s %-22s\n' "measurement (median, range, runs)" "without binaries" "with binaries"
    printf '%-52s %-22s %-22s\n' "first apply" "-" "$(cat "$WORK/b-first.txt") s"
    printf '%-52s %-22s %-22s\n' "no-op re-apply ($runs runs)" \
        "$(hmed "$WORK/a-noop.json") s ($(hrange "$WORK/a-noop.json"))" "$(hmed "$WORK/b-noop.json") s ($(hrange "$WORK/b-noop.json"))"
    printf '%-52s %-22s %-22s\n' "rolling restart of 3 apiservers ($runs runs)" "-" \
        "$(cut -d' ' -f1 "$WORK/b-rolling.txt" | med) s ($(cut -d' ' -f1 "$WORK/b-rolling.txt" | sort -n | sed -n '1p;$p' | paste -sd-))"
    printf '%-52s %-22s %-22s\n' "  probes with no ready apiserver / probes" "-" \
        "$(awk '{z += $3; n += $2} END {print z "/" n}' "$WORK/b-rolling.txt"), fewest ready: $(awk 'NR == 1 || $4 < m {m = $4} END {print m}' "$WORK/b-rolling.txt")"
    printf '%-52s %-22s %-22s\n' "restore, end to end ($runs runs)" \
        "$(med < "$WORK/a-restore.txt") s ($(sort -n "$WORK/a-restore.txt" | sed -n '1p;$p' | paste -sd-))" \
        "$(med < "$WORK/b-restore.txt") s ($(sort -n "$WORK/b-restore.txt" | sed -n '1p;$p' | paste -sd-))"
}

case "${1:-}" in
    _inside) shift; inside "$@"; exit ;;
esac

# ---- outside: build, lab up, run inside its netns, lab down ----
runs=${1:-5}
prefix=${BENCH_LAB_PREFIX:-rk}
net=${BENCH_LAB_NET:-10.84.0}
[ "$(id -u)" = 0 ] || { echo "$0: the lab needs root" >&2; exit 1; }
[ -n "${RAMPART_K8S_BIN:-}" ] || { echo "$0: set RAMPART_K8S_BIN to a folder with kube-apiserver … kubectl" >&2; exit 1; }
command -v hyperfine > /dev/null || { echo "$0: needs hyperfine (apt-get install -y hyperfine)" >&2; exit 1; }
state=/var/tmp/rampart-lab-$prefix
[ "$prefix" != rl ] || state=/var/tmp/rampart-lab
if [ -e "$state" ] || [ -e "/run/netns/$prefix-lab" ]; then
    echo "$0: a lab with prefix $prefix is already up; pick BENCH_LAB_PREFIX/BENCH_LAB_NET" >&2
    exit 1
fi

echo "::: cargo build --release (about 5 minutes the first time)"
cargo build --release
export BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/rampart
K8S_BIN=$(readlink -f "$RAMPART_K8S_BIN")
MINOR=$("$K8S_BIN/kubectl" version --client | awk '/Client Version/ {sub(/^v/, "", $3); split($3, v, "."); print v[1] "." v[2]}')
# Hosts get CAP_SYS_RESOURCE only where this machine has it (docs/lab.md).
if [ $(( 0x$(awk '/^CapBnd/ {print $2}' /proc/self/status) >> 24 & 1 )) = 1 ]; then RESTRICT=false; else RESTRICT=true; fi
WORK=$(mktemp -d /tmp/rampart-bench.XXXXXX)
export WORK K8S_BIN MINOR RESTRICT
th=(env TH_PREFIX="$prefix" TH_NET="$net" TH_KUBELET=1 bash tests/lab/testhosts.sh)
trap '"${th[@]}" down > /dev/null 2>&1 || echo "$0: lab $prefix down failed" >&2; rm -rf "$WORK"' EXIT
"${th[@]}" up 4 > /dev/null
export LAB_JSON=$state/hosts.json
LAB_KEY=$(jq -r .ssh_key "$LAB_JSON")
LAB_KNOWN_HOSTS=$(jq -r .known_hosts "$LAB_JSON")
export LAB_KEY LAB_KNOWN_HOSTS
# The pod sandbox image, built from the hosts' busybox (a one-layer OCI layout).
root1=$(jq -r '.hosts[0].root' "$LAB_JSON")
img=$WORK/img; mkdir -p "$img/root/bin" "$img/layout/blobs/sha256"
cp "$root1/bin/busybox" "$img/root/bin/"; ln -s busybox "$img/root/bin/sleep"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$img/root" -cf "$img/layer.tar" .
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$img/layout/blobs/sha256/$d"; echo "$d"; }
layer=$(blob "$img/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sleep","2147483647"],"User":"65534:65534"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$layer" > "$img/config.json"
config=$(blob "$img/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$config" "$(stat -c %s "$img/config.json")" "$layer" "$(stat -c %s "$img/layer.tar")" > "$img/manifest.json"
manifest=$(blob "$img/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"rampart.lab/pause:1"}}]}' \
    "$manifest" "$(stat -c %s "$img/manifest.json")" > "$img/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$img/layout/oci-layout"
tar -C "$img/layout" -cf "$WORK/pause.oci.tar" oci-layout index.json blobs
"${th[@]}" exec bash "$self" _inside "$runs"
