#!/usr/bin/env bash
# Benchmark: `rampart apply` fanning a bundle out to N lab hosts over SSH
# (hosts 1..3 [etcd, control-plane], the rest [worker]), against a naive
# OpenSSH script doing the same work one file at a time.
# No service is started (--skip-phases start-*, apply-manifests): what is
# measured is connect + lock + facts + plan + upload + commit + systemd units.
# Target: a no-op re-apply on 10 hosts ≤ 2 s.
#
#   1. first `rampart apply` to N fresh hosts (hosts reset before each run)
#   2. no-op re-`apply` on the same hosts
#   3. OpenSSH baselines: first install = per host, per file `scp` to a temp
#      name + `ssh chown/chmod/mv`; no-op = per host, per file `ssh sha256sum`
#      compared with `rampart render`'s manifest.json
#   4. `rampart verify` on the same hosts (target: about a no-op apply)
#   4b. `rampart certs check` on all hosts and on one (the difference over
#      the other hosts is the per-host cost of one SSH round trip each)
#   5. bytes rampart sends (`apply --output json`, per host `bytes_sent`)
#
# Usage (root; brings up its own lab and takes it down on exit):
#   [BENCH_LAB_PREFIX=rz BENCH_LAB_NET=10.83.0] bash tests/bench/apply-fanout.sh [HOSTS] [RUNS] [BASELINE_RUNS]
# BASELINE_RUNS=0 leaves out the OpenSSH baselines (minutes) and the byte counts.
set -euo pipefail
cd "$(dirname "$0")/../.."
self=$PWD/tests/bench/apply-fanout.sh
skip=start-etcd,start-control-plane,apply-manifests,start-nodes

# ---- helpers used inside the lab namespace (also as hyperfine commands) ----

# ssh/scp with the lab's key and pinned host keys; never asks, never trusts new keys.
sshopts=()
set_sshopts() {
    sshopts=(-i "$LAB_KEY" -o "UserKnownHostsFile=$LAB_KNOWN_HOSTS" -o BatchMode=yes
        -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=5)
}

# "name ip" per line, from hosts.json.
lab_hosts() { jq -r '.hosts[] | "\(.name) \(.ip)"' "$LAB_JSON"; }

# Puts every host back to the image's state (in parallel: it is not measured).
reset_hosts() {
    set_sshopts
    local name ip pids=()
    while read -r name ip; do
        ssh "${sshopts[@]}" -n "root@$ip" \
            'rm -rf /etc/kubernetes /var/lib/rampart /var/lib/kubelet /var/lib/kube-proxy \
                    /etc/systemd/system/etcd.service /etc/systemd/system/kube-*.service \
                    /etc/systemd/system/*.wants/etcd.service /etc/systemd/system/*.wants/kube-*.service \
                    /etc/sysctl.d/90-rampart-kubelet.conf && systemctl daemon-reload' &
        pids+=($!)
    done < <(lab_hosts)
    for p in "${pids[@]}"; do wait "$p"; done
}

# The naive first install: sequentially per host, per directory one ssh
# (mkdir/chown/chmod), per file one scp to a temp name and one ssh
# (chown/chmod/mv into place).
naive_install() {
    set_sshopts
    local name ip path mode owner group tmp=/root/.naive-upload
    while read -r name ip; do
        while read -r path mode owner group; do
            ssh "${sshopts[@]}" -n "root@$ip" "mkdir -p '$path' && chown '$owner:$group' '$path' && chmod '$mode' '$path'"
        done < <(jq -r '.dirs[] | "\(.path) \(.mode) \(.owner) \(.group)"' "$BUNDLE/$name/manifest.json")
        while read -r path mode owner group; do
            scp "${sshopts[@]}" -q "$BUNDLE/$name$path" "root@$ip:$tmp"
            ssh "${sshopts[@]}" -n "root@$ip" \
                "mkdir -p '$(dirname "$path")' && chown '$owner:$group' $tmp && chmod '$mode' $tmp && mv -f $tmp '$path'"
        done < <(jq -r '.files[] | "\(.path) \(.mode) \(.owner) \(.group)"' "$BUNDLE/$name/manifest.json")
    done < <(lab_hosts)
}

# The naive idempotency check: sequentially per host, per file one
# `ssh sha256sum`, compared with the manifest. Fails on any difference.
naive_check() {
    set_sshopts
    local name ip path sha got bad=0
    while read -r name ip; do
        while read -r path sha; do
            got=$(ssh "${sshopts[@]}" -n "root@$ip" sha256sum "$path" | cut -d' ' -f1)
            [ "$got" = "$sha" ] || { echo "$name: $path differs" >&2; bad=1; }
        done < <(jq -r '.files[] | "\(.path) \(.sha256)"' "$BUNDLE/$name/manifest.json")
    done < <(lab_hosts)
    return "$bad"
}

# The same check done sensibly with OpenSSH: one ssh per host hashing every file.
host_check() {
    set_sshopts
    local name ip bad=0
    while read -r name ip; do
        # shellcheck disable=SC2046 # one word per path
        diff <(jq -r '.files[] | "\(.sha256)  \(.path)"' "$BUNDLE/$name/manifest.json") \
            <(ssh "${sshopts[@]}" -n "root@$ip" sha256sum $(jq -r '.files[].path' "$BUNDLE/$name/manifest.json")) \
            > /dev/null || { echo "$name differs" >&2; bad=1; }
    done < <(lab_hosts)
    return "$bad"
}

# hyperfine's JSON → "min median max" in seconds.
stats() { jq -r '.results[0] | "\(.min) \(.median) \(.max) \(.times | length)"' "$1" |
    awk '{printf "%.2f %.2f %.2f %d\n", $1, $2, $3, $4}'; }

median() { jq -r '.results[0].median' "$WORK/$1.json"; }

# Everything that talks to the hosts: runs inside the lab's netns.
inside() {
    local runs=$1 base_runs=$2
    bin=$BIN
    export BUNDLE=$WORK/bundle
    local inv=$WORK/inventory.yaml
    {
        cat <<YAML
cluster:
  name: bench
  kubernetesVersion: "1.34"
  apiEndpoint: $(jq -r '.hosts[0].ip' "$LAB_JSON"):6443
  nodeNetwork: $(jq -r '.cluster_net' "$LAB_JSON")
ssh:
  user: root
  identityFile: $LAB_KEY
  knownHostsFile: $LAB_KNOWN_HOSTS
hosts:
YAML
        local i=0 name ip roles
        while read -r name ip; do
            i=$((i + 1))
            if [ "$i" -le 3 ]; then roles="[etcd, control-plane]"; else roles="[worker]"; fi
            printf '  - {name: %s, address: %s, roles: %s}\n' "$name" "$ip" "$roles"
        done < <(lab_hosts)
    } > "$inv"
    age-keygen -o "$WORK/id.txt" 2> /dev/null
    export RAMPART_IDENTITY=$WORK/id.txt RAMPART_STATE_DIR=$WORK/state
    "$bin" init -i "$inv" > /dev/null
    "$bin" render -i "$inv" --out "$BUNDLE" > /dev/null
    local files dirs bytes
    files=$(jq -s 'map(.files | length) | add' "$BUNDLE"/*/manifest.json)
    dirs=$(jq -s 'map(.dirs | length) | add' "$BUNDLE"/*/manifest.json)
    bytes=$(find "$BUNDLE" -type f ! -name manifest.json -printf '%s\n' | awk '{s+=$1} END{print s}')
    echo "bundle: $files files ($bytes bytes), $dirs dirs on $(lab_hosts | wc -l) hosts"

    local apply=("$bin" apply -i "$inv" --skip-phases "$skip")
    local hf=(hyperfine --style basic --export-json)
    local r="$WORK/reset" ; printf '#!/bin/sh\nexec bash %s _reset\n' "$self" > "$r"; chmod +x "$r"

    echo "::: rampart first apply ($runs runs, hosts reset before each)"
    "${hf[@]}" "$WORK/first.json" --runs "$runs" --prepare "$r" "${apply[*]}"
    echo "::: rampart no-op re-apply ($runs runs)"
    "${hf[@]}" "$WORK/noop.json" --runs "$runs" --warmup 1 "${apply[*]}"

    # verify reads the same hosts read-only in one round trip each. It exits
    # 13 here (etcd is not started: start-etcd is skipped), hence -i.
    echo "::: rampart verify ($runs runs)"
    "${hf[@]}" "$WORK/verify.json" --runs "$runs" --warmup 1 -i "$bin verify -i $inv"
    # certs check: one round trip per host. Exits 0 or 12 (the lab's leaves
    # are valid for a year), hence -i as well.
    local one; one=$(lab_hosts | head -1 | cut -d' ' -f1)
    echo "::: rampart certs check ($runs runs), all hosts and $one alone"
    "${hf[@]}" "$WORK/certs.json" --runs "$runs" --warmup 1 -i "$bin certs check -i $inv"
    "${hf[@]}" "$WORK/certs-one.json" --runs "$runs" --warmup 1 -i "$bin certs check -i $inv --hosts $one"

    # Bytes: one more first apply and one no-op, with --output json.
    reset_hosts
    "${apply[@]}" --output json > "$WORK/first-out.json" 2> /dev/null
    "${apply[@]}" --output json > "$WORK/noop-out.json" 2> /dev/null
    jq -e 'all(.hosts[]; (.plan.files | length) == 0)' "$WORK/noop-out.json" > /dev/null ||
        { echo "the re-apply was not a no-op" >&2; exit 1; }

    if [ "$base_runs" = 0 ]; then
        # BASELINE_RUNS=0: rampart's own figures only (the baselines take minutes).
        echo "=== $(lab_hosts | wc -l) hosts, $files files; nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
        for f in first noop verify certs certs-one; do printf '%-9s %s\n' "$f" "$(stats "$WORK/$f.json")"; done
        awk -v a="$(median certs)" -v b="$(median certs-one)" -v n="$(lab_hosts | wc -l)" \
            'BEGIN{printf "certs check: %.0f ms per host beyond the first\n", (a-b)/(n-1)*1000}'
        return
    fi
    echo "::: OpenSSH, one ssh per host: no-op check ($runs runs)"
    "${hf[@]}" "$WORK/host-check.json" --runs "$runs" "bash $self _host_check"
    echo "::: OpenSSH naive: no-op check, one ssh per file ($base_runs runs)"
    "${hf[@]}" "$WORK/naive-check.json" --runs "$base_runs" "bash $self _naive_check"
    echo "::: OpenSSH naive: first install, scp + ssh per file ($base_runs runs, hosts reset before each)"
    "${hf[@]}" "$WORK/naive-install.json" --runs "$base_runs" --prepare "$r" "bash $self _naive_install"
    # What the naive install left must match the manifests (same files, same hashes).
    host_check

    echo
    echo "=== $(lab_hosts | wc -l) hosts, $files files; nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-46s %6s %7s %6s %4s\n' "measurement" min_s median_s max_s runs
    local label f lo med hi n
    for label in "rampart apply, first:first" "rampart apply, no-op:noop" "rampart verify:verify" \
        "rampart certs check, all hosts:certs" "rampart certs check, one host:certs-one" \
        "OpenSSH naive, first (scp+ssh per file):naive-install" \
        "OpenSSH naive, no-op (ssh per file):naive-check" \
        "OpenSSH, no-op (one ssh per host):host-check"; do
        f=${label##*:}
        read -r lo med hi n < <(stats "$WORK/$f.json")
        printf '%-46s %6s %7s %6s %4s\n' "${label%:*}" "$lo" "$med" "$hi" "$n"
    done
    awk -v a="$(median naive-install)" -v b="$(median first)" -v c="$(median naive-check)" \
        -v d="$(median noop)" -v e="$(median host-check)" \
        -v v="$(median verify)" \
        'BEGIN{printf "ratios (median): first naive/rampart %.1fx, no-op naive/rampart %.1fx, no-op one-ssh-per-host/rampart %.1fx, verify/no-op apply %.2fx\n", a/b, c/d, e/d, v/d}'
    echo "bytes_sent per host (first apply / no-op re-apply):"
    jq -r --slurpfile n "$WORK/noop-out.json" \
        '.hosts[] as $h | "  \($h.host) \($h.bytes_sent) / \($n[0].hosts[] | select(.host == $h.host) | .bytes_sent)"' \
        "$WORK/first-out.json"
    echo "  total $(jq '[.hosts[].bytes_sent] | add' "$WORK/first-out.json") / $(jq '[.hosts[].bytes_sent] | add' "$WORK/noop-out.json")"
}

case "${1:-}" in
    _reset) reset_hosts; exit ;;
    _naive_install) naive_install; exit ;;
    _naive_check) naive_check; exit ;;
    _host_check) host_check; exit ;;
    _inside) shift; inside "$@"; exit ;;
esac

# ---- outside: build, lab up, run inside its netns, lab down ----
hosts=${1:-10}
runs=${2:-3}
base_runs=${3:-$runs}
prefix=${BENCH_LAB_PREFIX:-rz}
net=${BENCH_LAB_NET:-10.83.0}
[ "$(id -u)" = 0 ] || { echo "$0: the lab needs root" >&2; exit 1; }
command -v hyperfine > /dev/null || { echo "$0: needs hyperfine (apt-get install -y hyperfine)" >&2; exit 1; }
state=/var/tmp/rampart-lab-$prefix
[ "$prefix" != rl ] || state=/var/tmp/rampart-lab
# A lab already up under this prefix is someone else's: neither use nor remove it.
if [ -e "$state" ] || [ -e "/run/netns/$prefix-lab" ]; then
    echo "$0: a lab with prefix $prefix is already up; pick BENCH_LAB_PREFIX/BENCH_LAB_NET" >&2
    exit 1
fi

# BENCH_BIN=PATH measures another rampart (an older build, for a before/after).
if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
else
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/rampart
fi
export BIN
WORK=$(mktemp -d /tmp/rampart-bench.XXXXXX)
export WORK
th=(env TH_PREFIX="$prefix" TH_NET="$net" bash tests/lab/testhosts.sh)
trap '"${th[@]}" down > /dev/null 2>&1 || echo "$0: lab $prefix down failed" >&2; rm -rf "$WORK"' EXIT
"${th[@]}" up "$hosts" > /dev/null
export LAB_JSON=$state/hosts.json
LAB_KEY=$(jq -r .ssh_key "$LAB_JSON")
LAB_KNOWN_HOSTS=$(jq -r .known_hosts "$LAB_JSON")
export LAB_KEY LAB_KNOWN_HOSTS
"${th[@]}" exec bash "$self" _inside "$runs" "$base_runs"
