#!/usr/bin/env bash
# Runs every test: unit tests and the integration binary (golden files, real
# openssl, systemd-analyze and etcd-server, and the lab tests against real
# hosts), as root on a Debian machine. Ends with one summary line:
# `tests: N passed, N failed`.
#
# The lab (tests/lab/testhosts.sh, docs/lab.md): two labs of 4 hosts come up,
#   main    RAMPART_LAB_PREFIX [rl]     RAMPART_LAB_NET [10.77.0]      flat
#   bastion RAMPART_BASTION_PREFIX [rb] RAMPART_BASTION_NET [10.78.0]  TH_BASTION=1
#           (its inner network is the net with the third octet + 1: 10.78.1)
# and one EXIT trap takes both down whatever happens. The whole suite runs
# inside the main lab's network namespace (RAMPART_LAB=<its hosts.json>), then
# the `lab_bastion*` tests inside the bastion lab's (RAMPART_LAB_BASTION=...).
# Nothing that talks to lab hosts runs outside a lab namespace.
#
# RAMPART_NO_LAB=1: no lab, the suite runs as is and the lab tests skip
# (with CI set they fail instead: CI must run them).
#
# RAMPART_K8S_BIN=DIR: upstream Kubernetes binaries (kube-apiserver, …,
# kubectl); the main lab comes up in kubelet mode (TH_KUBELET=1) and the
# `lab_kubernetes*` tests run a real cluster on it. Without it they skip
# with a line saying so (CI has no Kubernetes binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

th=tests/lab/testhosts.sh
main_prefix=${RAMPART_LAB_PREFIX:-rl}
main_net=${RAMPART_LAB_NET:-10.77.0}
b_prefix=${RAMPART_BASTION_PREFIX:-rb}
b_net=${RAMPART_BASTION_NET:-10.78.0}
b_inner=${b_net%.*}.$(( ${b_net##*.} + 1 ))   # as testhosts.sh derives TH_INNER_NET
no_lab=${RAMPART_NO_LAB:-}
[ "$no_lab" != 0 ] || no_lab=
# Settings of testhosts.sh from the caller's environment must not reach the labs.
unset TH_PREFIX TH_NET TH_BASTION TH_INNER_NET TH_STATE TH_CLIENT_DIR TH_KUBELET
k8s_bin=${RAMPART_K8S_BIN:-}
if [ -n "$k8s_bin" ]; then kubelet_mode=1; else kubelet_mode=0; fi

# The state and client dirs testhosts.sh uses for a prefix (its defaults).
state_of()  { if [ "$1" = rl ]; then echo /var/tmp/rampart-lab; else echo "/var/tmp/rampart-lab-$1"; fi; }
client_of() { if [ "$1" = rl ]; then echo /var/lib/rampart-lab/ssh; else echo "/var/lib/rampart-lab/ssh-$1"; fi; }
main_lab()    { TH_PREFIX=$main_prefix TH_NET=$main_net TH_BASTION=0 TH_KUBELET=$kubelet_mode bash "$th" "$@"; }
bastion_lab() { TH_PREFIX=$b_prefix TH_NET=$b_net TH_BASTION=1 bash "$th" "$@"; }
now() { date +%s; }

# What is left of the labs after `down`: netns, mounts, processes, cgroups,
# guard routes, files. Prints it; fails if there is anything.
leftovers() {
    local p s left=""
    for p in "$main_prefix" "$b_prefix"; do
        s=$(state_of "$p")
        left+=$(ip netns list | awk '{print $1}' | grep -E "^$p-(lab|inner|h[0-9]+)$" | sed 's/^/netns /' || true)$'\n'
        left+=$(awk -v s="$s" 'index($2, s "/") == 1 || $2 == s {print "mount " $2}' /proc/mounts || true)$'\n'
        left+=$(pgrep -af -- "systemd-nspawn .*--machine=${p}[0-9]+( |$)" | sed 's/^/process /' || true)$'\n'
        left+=$(find /sys/fs/cgroup -maxdepth 2 -name "$p-rampart-lab" 2>/dev/null | sed 's/^/cgroup /' || true)$'\n'
        for f in "$s" "$s.lock" "$(client_of "$p")"; do
            if [ -e "$f" ]; then left+="file $f"$'\n'; fi
        done
    done
    left+=$(pgrep -af -- "$(readlink -f "$th") _run" | sed 's/^/supervisor /' || true)$'\n'
    # kernel values a lab changed, not put back
    for f in /var/tmp/rampart-lab-sysctl.orig /var/tmp/rampart-lab-sysctl.orig.lock; do
        if [ -e "$f" ]; then left+="file $f"$'\n'; fi
    done
    left+=$(ip route show type unreachable | grep -E "^(${main_net//./\\.}|${b_net//./\\.}|${b_inner//./\\.})\.0/24" | sed 's/^/route /' || true)$'\n'
    left=$(grep -v '^$' <<< "$left" || true)
    if [ -n "$left" ]; then
        printf 'lab leftovers after down:\n%s\n' "$left" >&2
        return 1
    fi
    echo "labs down: no netns, mounts, processes, cgroups, routes or files left"
}

labs_up=0      # 1 from just before the first `up` until both labs are down
t_down=0
teardown() {
    [ "$labs_up" = 1 ] || return 0
    local t0 rc=0
    t0=$(now)
    bastion_lab down || rc=1
    main_lab down || rc=1
    t_down=$(( $(now) - t0 ))
    labs_up=0
    leftovers || rc=1
    return "$rc"
}

log=$(mktemp)
# The one EXIT trap: whatever happens (failure, Ctrl-C, TERM), both labs go
# down. INT/TERM only turn into an exit, so the EXIT trap runs; while it runs,
# they are ignored so that a second Ctrl-C cannot interrupt `down`.
# shellcheck disable=SC2317  # (called by the trap)
on_exit() {
    local rc=$?
    trap '' INT TERM
    set +e
    teardown || rc=1
    rm -f "$log"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(now)
bash tests/deps.sh

if [ -z "$no_lab" ]; then
    [ "$(id -u)" = 0 ] || { echo "tests/run.sh: the lab needs root (or set RAMPART_NO_LAB=1 to skip the lab tests)" >&2; exit 1; }
    [ "$main_prefix" != "$b_prefix" ] || { echo "tests/run.sh: the two labs need different prefixes" >&2; exit 1; }
    for n in "$b_net" "$b_inner"; do
        [ "$n" != "$main_net" ] || { echo "tests/run.sh: the bastion lab's nets ($b_net, $b_inner) must differ from the main lab's ($main_net)" >&2; exit 1; }
    done
    # A lab that is already up is someone else's (or left over): neither use
    # nor take it down.
    for p in "$main_prefix" "$b_prefix"; do
        if [ -e "$(state_of "$p")" ] || [ -e "/run/netns/$p-lab" ]; then
            echo "tests/run.sh: a lab with prefix $p is already up; take it down (TH_PREFIX=$p TH_NET=... bash $th down) or pick other RAMPART_*_PREFIX/NET" >&2
            exit 1
        fi
    done
    missing=0
    for t in debootstrap mksquashfs unsquashfs systemd-nspawn ip ssh ssh-keygen setsid flock; do
        command -v "$t" >/dev/null || missing=1
    done
    [ "$missing" = 0 ] || bash "$th" deps
fi

echo "::: build tests"
t0=$(now)
cargo test --all-targets --no-run
t_build=$(( $(now) - t0 ))

status=0
if [ -n "$no_lab" ]; then
    if [ -n "${CI:-}" ]; then echo "::: RAMPART_NO_LAB with CI set: the lab tests will fail"; fi
    echo "::: tests (no lab)"
    t0=$(now)
    env -u RAMPART_LAB -u RAMPART_LAB_BASTION cargo test --all-targets 2>&1 | tee "$log" || status=$?
    t_test=$(( $(now) - t0 ))
    echo "::: times: build ${t_build} s, tests ${t_test} s"
else
    echo "::: lab up: $main_prefix ($main_net.0/24) and $b_prefix (bastion, $b_net.0/24 + $b_inner.0/24)"
    t0=$(now)
    labs_up=1
    main_lab up 4
    bastion_lab up 4
    t_up=$(( $(now) - t0 ))
    main_json=$(state_of "$main_prefix")/hosts.json
    b_json=$(state_of "$b_prefix")/hosts.json

    echo "::: tests in netns $main_prefix-lab (all but lab_bastion*)"
    t0=$(now)
    main_lab exec env -u RAMPART_LAB_BASTION RAMPART_LAB="$main_json" RAMPART_K8S_BIN="$k8s_bin" \
        cargo test --offline --all-targets -- --skip lab_bastion 2>&1 | tee "$log" || status=$?
    t_test=$(( $(now) - t0 ))

    echo "::: tests in netns $b_prefix-lab (lab_bastion*)"
    t0=$(now)
    bastion_lab exec env -u RAMPART_LAB -u RAMPART_K8S_BIN RAMPART_LAB_BASTION="$b_json" \
        cargo test --offline --test it lab_bastion 2>&1 | tee -a "$log" || status=$?
    t_btest=$(( $(now) - t0 ))

    echo "::: lab down"
    teardown || status=1
    echo "::: times: build ${t_build} s, lab up ${t_up} s, tests ${t_test} s, bastion tests ${t_btest} s, lab down ${t_down} s"
fi

echo "::: run.sh done in $(( $(now) - start )) s"
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
echo "tests: $passed passed, $failed failed"
exit "$status"
