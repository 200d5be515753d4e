#!/usr/bin/env bash
# Benchmark: `rampart backup restore` of a ≥ 200 MB etcd database onto the 3
# members of a lab cluster, against the bare work it orchestrates.
#
#   0. lab up (3 hosts, all [etcd, control-plane]), `rampart init`, `rampart
#      apply` without the control plane (a real 3-member etcd, TLS, systemd),
#      SIZE_MB one-MiB values put through host 1, one backup taken with the
#      real job (`rampart agent snapshot`, run here inside the lab's netns
#      against host 1's client URL, like tests/it/lab/restore.rs)
#   1. `rampart backup verify` of that backup (decrypt + snapshot status) here
#   2. `rampart backup restore FILE --identity … -i inv --yes`, end to end,
#      RUNS times (each one a full restore; between runs, not timed, the
#      pre-restore dirs it kept are deleted so the disk does not fill up);
#      every output line is time-stamped, for where the time goes
#   3. baselines, with the plaintext of the same snapshot (`age -d`, timed):
#      - copy: `scp` of the plaintext to host 1; to the 3 members at once
#      - bare restore on host 1: `etcdctl snapshot restore` into a scratch dir
#        (and, apart, what rampart's restore step adds to it: sha256sum -c,
#        snapshot status, sync), timed on the host
#      - the same bare restore on the 3 members at once
#
# With COMPARE_BIN=/path/to/another/rampart (an earlier build of this repo),
# every restore run is done twice on the same backup, by this build (A) and
# by that one (B), in alternating order, so two builds are compared on the
# same data, lab and load.
#
# Usage (root; brings up its own lab and takes it down on exit):
#   [SIZE_MB=256] [COMPARE_BIN=…] [BENCH_LAB_PREFIX=rq BENCH_LAB_NET=10.87.0] bash tests/bench/restore.sh [RUNS] [VERIFY_RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
self=$PWD/tests/bench/restore.sh
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
lab_hosts() { jq -r '.hosts[] | "\(.name) \(.ip)"' "$LAB_JSON"; }
host_ip() { jq -r ".hosts[$1].ip" "$LAB_JSON"; }
on() { local i=$1; shift; ssh "${sshopts[@]}" -n "root@$(host_ip "$i")" "$@"; }
on_all() { # runs the same command on every host at once; fails if one fails
    local i pids=() rc=0
    for i in 0 1 2; do on "$i" "$@" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return "$rc"
}
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}'; }
# Prefixes each line with the seconds since $1.
stamp() { local t0=$1 l; while IFS= read -r l; do printf '%7.2f %s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')" "$l"; done; }
# Runs a shell snippet on host I and prints its wall time measured on the host.
timed_on() {
    local i=$1; shift
    on "$i" "s=\$(date +%s%N); { $*; } > /var/tmp/bench-timed.log 2>&1 || { cat /var/tmp/bench-timed.log >&2; exit 1; }
        e=\$(date +%s%N); awk -v n=\$((e-s)) 'BEGIN{printf \"%.2f\n\", n/1e9}'"
}

# One line of phase durations from a time-stamped `rampart -v backup restore` output.
phases() {
    awk '
        BEGIN { short["read"] = "facts"; short["write"] = "journal"; short["stop"] = "stop-etcd"
                short["move"] = "move-aside"; short["upload"] = "upload+restore"; short["start"] = "start-etcd" }
        function close_phase(t) { if (name != "") out = out sprintf("%s %.2f | ", name, t - start) }
        $2 == "==>" {
            if (first == "") { first = $1; out = sprintf("verify before connect %.2f | ", $1) }
            close_phase($1); start = $1
            name = ($3 in short) ? short[$3] : $3
        }
        / upload snapshot$/ { up[$2] = $1 }
        / snapshot restore$/ { rs[$2] = $1 }
        / restored revision / { done_[$2] = $1 }
        { last = $1 }
        END {
            close_phase(last)
            for (h in up) { if (rs[h] - up[h] > u) u = rs[h] - up[h]; if (done_[h] - rs[h] > x) x = done_[h] - rs[h] }
            printf "%s(upload %.2f, restore step %.2f) total %.2f\n", out, u, x, last
        }' "$1"
}

inside() {
    local runs=$1 vruns=$2 size_mb=$3
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
    local t0
    t0=$(now)
    "$bin" apply -i "$inv" --skip-phases "$skip" > "$w/apply.out" 2>&1 || { cat "$w/apply.out" >&2; exit 1; }
    echo "apply (3-member etcd): $(since "$t0") s" >&2
    on 0 "$etcdctl_remote endpoint health --cluster" >&2

    echo "filling etcd with $size_mb × 1 MiB values through $(jq -r '.hosts[0].name' "$LAB_JSON")…" >&2
    t0=$(now)
    # 768 KiB of random bytes → 1 MiB of base64: incompressible, under the 1.5 MiB request limit.
    on 0 "for i in \$(seq 1 $size_mb); do head -c 786432 /dev/urandom | base64 -w0 | $etcdctl_remote put /bench/\$i > /dev/null || exit 1; done"
    local fill_s
    fill_s=$(since "$t0")
    echo "fill: $fill_s s" >&2
    on 0 "$etcdctl_remote endpoint status --cluster -w table" >&2

    # The backup: the real job, here, against host 1, with the bundle's healthcheck client.
    "$bin" render -i "$inv" --out "$w/bundle" > /dev/null 2>&1
    local pki
    pki=$w/bundle/$(jq -r '.hosts[0].name' "$LAB_JSON")/etc/kubernetes/pki/etcd
    age-keygen -o "$w/backup-id.txt" 2> /dev/null
    cat > "$w/backup.yaml" <<YAML
cluster: bench
member: $(jq -r '.hosts[0].name' "$LAB_JSON")
etcdctl: $(command -v etcdctl)
endpoint: https://$(host_ip 0):2379
cacert: $pki/ca.crt
cert: $pki/healthcheck-client.crt
key: $pki/healthcheck-client.key
dir: $w/backups
recipients: [$(age-keygen -y "$w/backup-id.txt")]
YAML
    t0=$(now)
    "$bin" -v agent snapshot --config "$w/backup.yaml" > /dev/null 2> "$w/snapshot.err" ||
        { cat "$w/snapshot.err" >&2; exit 1; }
    local snap_s backup manifest
    snap_s=$(since "$t0")
    backup=$(ls "$w"/backups/*.db.age)
    manifest=${backup%.db.age}.manifest.json
    echo "backup job: $snap_s s; $(jq -c '{snapshotSize, ciphertextSize, revision, totalKeys}' "$manifest")" >&2

    # 1. verify, here.
    local r vt=()
    for r in $(seq 1 "$vruns"); do
        /usr/bin/time -f "%e %M" -o "$w/time" "$bin" backup verify "$backup" \
            --identity "$w/backup-id.txt" --scratch-dir "$w" > /dev/null 2> "$w/verify.err" ||
            { echo "verify failed:" >&2; cat "$w/verify.err" >&2; exit 1; }
        vt+=("$(cat "$w/time")")
    done

    # 2. restore, end to end (with COMPARE_BIN: A and B in turn, alternating).
    local rt=() rt_b=() leaders=() rc since_epoch order which b
    for r in $(seq 1 "$runs"); do
        order=(a)
        if [ -n "${COMPARE_BIN:-}" ]; then
            if [ $((r % 2)) = 1 ]; then order=(a b); else order=(b a); fi
        fi
        for which in "${order[@]}"; do
        b=$bin; [ "$which" = a ] || b=$COMPARE_BIN
        local out=$w/restore-$r.out; [ "$which" = a ] || out=$w/restore-$r-b.out
        on_all 'rm -rf /var/lib/etcd.pre-restore-*' # not timed: the previous run's kept data
        sync
        [ "$which" = b ] || leaders+=("$(on 0 "$etcdctl_remote endpoint status --cluster -w json" |
            jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint')")
        since_epoch=$(date +%s)
        t0=$(now)
        set +e
        /usr/bin/time -f "%e %M" -o "$w/time" "$b" -v backup restore "$backup" \
            --identity "$w/backup-id.txt" -i "$inv" --yes --scratch-dir "$w" 2>&1 |
            stamp "$t0" > "$out"
        rc=${PIPESTATUS[0]}
        set -e
        if [ "$rc" != 0 ]; then
            echo "restore run $r ($which) failed (exit $rc):" >&2; cat "$out" >&2; exit 1
        fi
        if [ "$which" = a ]; then rt+=("$(cat "$w/time")"); else rt_b+=("$(cat "$w/time")"); fi
        # What etcd said while it was stopped (leadership transfer on shutdown).
        [ "$which" = a ] && for i in 0 1 2; do
            on "$i" "journalctl -u etcd -o cat --since @$since_epoch --no-pager |
                grep -E 'leadership transfer|received signal' | head -4" |
                jq -r --arg h "$(jq -r ".hosts[$i].name" "$LAB_JSON")" \
                    '"\($h) \(.ts) \(.msg)\(if .error then ": " + .error else "" end)\(if .took then " (" + .took + ")" else "" end)"'
        done > "$w/etcd-stop-$r.log" || true
        # The restored cluster must hold the data.
        [ "$(on 2 "$etcdctl_remote get /bench/ --prefix --keys-only | grep -c .")" = "$size_mb" ] ||
            { echo "restore run $r ($which): $size_mb keys expected on host 3" >&2; exit 1; }
        done
    done

    # 3. baselines with the plaintext.
    sync
    t0=$(now)
    age -d -i "$w/backup-id.txt" -o "$w/snap.db" "$backup"
    local age_s size sha
    age_s=$(since "$t0")
    size=$(stat -c %s "$w/snap.db")
    sha=$(sha256sum "$w/snap.db" | cut -d' ' -f1)
    sync
    t0=$(now)
    scp "${sshopts[@]}" -q "$w/snap.db" "root@$(host_ip 0):/var/tmp/bench-snap.db"
    local scp1_s scp3_s
    scp1_s=$(since "$t0")
    t0=$(now)
    local i pids=()
    for i in 1 2 3; do scp "${sshopts[@]}" -q "$w/snap.db" "root@$(host_ip $((i - 1))):/var/tmp/bench-snap3.db" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
    scp3_s=$(since "$t0")
    local restore_cmd="ETCDCTL_API=3 etcdctl snapshot restore /var/tmp/bench-snap.db --name NAME \
 --initial-cluster NAME=https://10.0.0.1:2380 --initial-cluster-token bench \
 --initial-advertise-peer-urls https://10.0.0.1:2380 --data-dir /var/tmp/bench-restore"
    local sha_s bare_s status_s sync_s bare3=()
    on 0 'rm -rf /var/tmp/bench-restore; sync'
    sha_s=$(timed_on 0 "printf '%s  %s\n' $sha /var/tmp/bench-snap.db | sha256sum -c --status")
    bare_s=$(timed_on 0 "$restore_cmd")
    status_s=$(timed_on 0 "ETCDCTL_API=3 etcdctl snapshot status -w json /var/tmp/bench-restore/member/snap/db")
    sync_s=$(timed_on 0 sync)
    on_all 'rm -rf /var/tmp/bench-restore /var/tmp/bench-snap.db; sync'
    # The bare restore on the 3 members at once, from the copies of the parallel scp.
    pids=()
    for i in 0 1 2; do
        timed_on "$i" "${restore_cmd//bench-snap.db/bench-snap3.db} && sync" > "$w/bare3-$i" & pids+=($!)
    done
    wait
    for i in 0 1 2; do bare3+=("$(cat "$w/bare3-$i")"); done
    on_all 'rm -rf /var/tmp/bench-restore /var/tmp/bench-snap3.db'

    # ---- report ----
    echo
    echo "=== etcd restore, 3 members; snapshot $size bytes ($(jq -r '.revision' "$manifest") rev, $(jq -r '.totalKeys' "$manifest") keys), backup $(stat -c %s "$backup") bytes"
    echo "nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg); fill ${fill_s} s, backup job ${snap_s} s"
    printf '%-58s %s\n' "measurement" "wall_s (max RSS MB)"
    local x
    for x in "${vt[@]}"; do
        read -r a m <<< "$x"
        printf '%-58s %s (%d)\n' "rampart backup verify (here)" "$a" "$((m / 1024))"
    done
    for r in $(seq 1 "$runs"); do
        read -r a m <<< "${rt[$((r - 1))]}"
        printf '%-58s %s (%d)\n' "rampart backup restore, run $r (3 members)" "$a" "$((m / 1024))"
        if [ -n "${COMPARE_BIN:-}" ]; then
            read -r a m <<< "${rt_b[$((r - 1))]}"
            printf '%-58s %s (%d)\n' "  COMPARE_BIN, run $r (3 members)" "$a" "$((m / 1024))"
        fi
    done
    printf '%-58s %s\n' "age -d of the backup (here; no checks)" "$age_s"
    printf '%-58s %s\n' "scp plaintext to host 1" "$scp1_s"
    printf '%-58s %s\n' "scp plaintext to the 3 members at once" "$scp3_s"
    printf '%-58s %s\n' "host 1: sha256sum -c of the upload" "$sha_s"
    printf '%-58s %s\n' "host 1: etcdctl snapshot restore (bare)" "$bare_s"
    printf '%-58s %s\n' "host 1: etcdctl snapshot status of the restored db" "$status_s"
    printf '%-58s %s\n' "host 1: sync after it" "$sync_s"
    printf '%-58s %s\n' "3 members at once: snapshot restore + sync (each)" "${bare3[*]}"
    echo "restore phases (s; upload and restore step: the slowest member):"
    for r in $(seq 1 "$runs"); do printf '  run %s: %s\n' "$r" "$(phases "$w/restore-$r.out")"; done
    if [ -n "${COMPARE_BIN:-}" ]; then
        for r in $(seq 1 "$runs"); do printf '  run %s (COMPARE_BIN): %s\n' "$r" "$(phases "$w/restore-$r-b.out")"; done
    fi
    for r in $(seq 1 "$runs"); do
        echo "run $r: leader before the restore ${leaders[$((r - 1))]}; etcd's journal while it stopped:"
        sed 's/^/  /' "$w/etcd-stop-$r.log"
    done
    echo "timeline of the last restore (seconds since start, rampart's own lines):"
    sed 's/^/  /' "$w/restore-$runs.out"
}

case "${1:-}" in
    _inside) shift; inside "$@"; exit ;;
esac

# ---- outside: build, lab up, run inside its netns, lab down ----
runs=${1:-2}
vruns=${2:-2}
prefix=${BENCH_LAB_PREFIX:-rq}
net=${BENCH_LAB_NET:-10.87.0}
[ "$(id -u)" = 0 ] || { echo "$0: the lab needs root" >&2; exit 1; }
state=/var/tmp/rampart-lab-$prefix
[ "$prefix" != rl ] || state=/var/tmp/rampart-lab
# A lab already up under this prefix is someone else's: neither use nor remove it.
if [ -e "$state" ] || [ -e "/run/netns/$prefix-lab" ]; then
    echo "$0: a lab with prefix $prefix is already up; pick BENCH_LAB_PREFIX/BENCH_LAB_NET" >&2
    exit 1
fi

cargo build --release --quiet
export BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/rampart
WORK=$(mktemp -d /tmp/rampart-bench-restore.XXXXXX)
export WORK
th=(env TH_PREFIX="$prefix" TH_NET="$net" bash tests/lab/testhosts.sh)
trap '"${th[@]}" down > /dev/null 2>&1 || echo "$0: lab $prefix down failed" >&2; rm -rf "$WORK"' EXIT
"${th[@]}" up 3 > /dev/null
export LAB_JSON=$state/hosts.json
LAB_KEY=$(jq -r .ssh_key "$LAB_JSON")
LAB_KNOWN_HOSTS=$(jq -r .known_hosts "$LAB_JSON")
export LAB_KEY LAB_KNOWN_HOSTS
"${th[@]}" exec bash "$self" _inside "$runs" "$vruns" "${SIZE_MB:-256}"
