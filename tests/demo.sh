#!/usr/bin/env bash
# The main job end to end on the local lab (what README's first command runs):
# build rampart, bring up 4 real hosts (systemd-nspawn: systemd, OpenSSH,
# Debian's etcd), create the cluster PKI, pin the hosts' SSH keys, plan,
# `rampart apply` the lab inventory, show the etcd cluster healthy over mTLS,
# re-apply (no changes), run the CIS self-check on the rendered bundle, and
# take the lab down again.
#
# The lab has no Kubernetes binaries (no internet needed), so the
# control-plane and node start phases are skipped: their units are installed,
# verified and enabled; etcd really runs. With an artifacts dir of upstream
# binaries (vagrant/ or your own), nothing needs skipping.
#
# Usage: bash tests/demo.sh             (as root on Debian 12; installs its packages)
#        KEEP_LAB=1 bash tests/demo.sh  (leave the lab running and keep the work dir:
#                                        state dir, identity, bundle, to go on by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
inventory=inventories/lab.yaml
# CIS checks: the catalogue built into rampart; RAMPART_CIS_BENCHMARK=FILE evaluates other definitions.
benchmark=${RAMPART_CIS_BENCHMARK:-}
lab=tests/lab/testhosts.sh
skip=start-control-plane,apply-manifests,start-nodes
keep=${KEEP_LAB:-0}
rampart=${CARGO_TARGET_DIR:-target}/debug/rampart   # made absolute once built

# The work dir holds the cluster's state dir, its identity and the rendered
# bundle, private keys in plaintext: it goes when the demo ends, unless the
# lab is kept for more.
work=$(mktemp -d /tmp/rampart-demo.XXXXXX)
chmod 700 "$work"
log=$work/demo.log
ok=0
cleanup() {
  if [ "$keep" = 1 ]; then
    echo
    echo "# KEEP_LAB=1: the lab is still running and $work is kept (private keys in plaintext)."
    echo "#   state dir:  $work/state   (export RAMPART_STATE_DIR=$work/state)"
    echo "#   identity:   $work/admin-identity.txt   (export RAMPART_IDENTITY=$work/admin-identity.txt)"
    echo "#   bundle:     $work/bundle"
    echo "#   talk to the hosts: bash $lab exec <command>, e.g. bash $lab exec $rampart plan -i $inventory"
    echo "#   when done:  bash $lab down; rm -rf $work"
    return
  fi
  # The lab goes first; then the work dir, which only opens a cluster that is
  # gone. A failed step has shown the end of its log already.
  local down=ok
  bash "$lab" down >>"$log" 2>&1 || down=failed
  rm -rf "$work"
  if [ "$down" = failed ]; then
    echo "# taking the lab down failed; try: bash $lab down" >&2
  elif [ "$ok" = 1 ]; then
    echo "# the lab is down and $work is removed (KEEP_LAB=1 keeps both)"
  fi
}
trap cleanup EXIT

say() { printf '\n$ %s\n' "$*"; }
# A step the reader should see: the command, then its output.
step() { say "$*"; "$@"; }
# A step whose output is long and not the point (apt, the lab's own log):
# the command is shown, its output goes to the log, which is shown if it fails.
quiet() {
  say "$*"
  if ! "$@" >>"$log" 2>&1; then
    echo "failed: $*; the end of its output:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
}
# Every rampart command reads the inventory and prints its warnings (the lab's
# apiEndpoint is one control plane's own address); the demo shows each once.
seen=$work/warnings-seen
: >"$seen"
once() {
  awk -v seen="$seen" '
    BEGIN { while ((getline l < seen) > 0) shown[l] = 1 }
    /^warning: / { if ($0 in shown) next; shown[$0] = 1; print $0 >> seen; fflush(seen) }
    { print; fflush() }'
}
# Runs a step with its stderr through `once`; the step's exit status is kept
# (pipefail).
warn_once() { { "$@" 2>&1 1>&3 3>&- | once >&2; } 3>&1; }
# Everything that talks to the hosts runs inside the lab's network namespace.
inlab() { say "${*//$rampart/rampart}"; warn_once bash "$lab" exec "$@"; }
ramp() { say "rampart $*"; warn_once "$rampart" "$@"; }
# The same with stdout left out (long lists the reader need not see); the
# command line and the warnings still show.
ramp_quiet() { say "rampart $*"; warn_once "$rampart" "$@" >/dev/null; }

echo "# packages, then the build; apt's and the lab's output is shown only when they fail"
quiet bash tests/deps.sh
quiet bash "$lab" deps
# The dev profile, as the tests build it: `bash tests/run.sh` afterwards reuses
# this build instead of compiling every crate a second time.
echo "# building rampart: about 10 min on 2 cores the first time (cargo lists each crate), seconds after" >&2
step cargo build
rampart=$(readlink -f "${CARGO_TARGET_DIR:-target}/debug/rampart")

# Fresh hosts: a lab left over from an earlier run is taken down first.
bash "$lab" down >>"$log" 2>&1 || true
quiet bash "$lab" up 4

age-keygen -o "$work/admin-identity.txt" 2>>"$log"
export RAMPART_IDENTITY=$work/admin-identity.txt RAMPART_STATE_DIR=$work/state

ramp check -i "$inventory"
ramp_quiet init -i "$inventory"
inlab "$rampart" hosts trust -i "$inventory"
inlab "$rampart" plan -i "$inventory" --skip-phases "$skip" | grep -v '^  ' || true
inlab "$rampart" apply -i "$inventory" --skip-phases "$skip"

printf '\n# etcd, asked on cp1 with the healthcheck client certificate:\n'
bash "$lab" ssh 1 "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
  --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
  --key=/etc/kubernetes/pki/etcd/healthcheck-client.key endpoint health --cluster -w table"
printf '\n# the control-plane units are enabled (not started: the lab has no Kubernetes binaries); etcd data and the CA key are private:\n'
bash "$lab" ssh 1 "systemctl is-enabled kube-apiserver kubelet | paste -sd' '; stat -c '%A %U:%G %n' /var/lib/etcd /etc/kubernetes/pki/ca.key"

inlab "$rampart" apply -i "$inventory" --skip-phases "$skip" | tee "$work/apply-again.txt"   # again: no changes
converged="the second apply changed nothing"
grep -q '^apply done: 0 of ' "$work/apply-again.txt" || converged="the second apply still changed something (see above)"

ramp render -i "$inventory" --out "$work/bundle"
cis=("$rampart" cis check --bundle "$work/bundle" ${benchmark:+--benchmark "$benchmark"})
say "rampart cis check --bundle $work/bundle${benchmark:+ --benchmark $benchmark}"
# The failing checks with what was seen, and the totals; the passing ones are left out.
cis_rc=0
"${cis[@]}" >"$work/cis.txt" || cis_rc=$?
cat "$work/cis.txt" >>"$log"
awk '/^[^ ]+: [^ ]+ +FAIL / { show = 1; print; next }
     show && /^      / { print; next }
     { show = 0 }
     / pass, [0-9]+ fail / { print }' "$work/cis.txt"
echo "(a FAIL that is not automated is for a person to judge: its lines above say what was seen)"
[ "$cis_rc" = 0 ] || { echo "the CIS self-check failed (exit $cis_rc)" >&2; exit "$cis_rc"; }
cis="no automated CIS check failed"

# The same checks on what the hosts really run, with drift and health.
verify_rc=0
inlab "$rampart" verify -i "$inventory" || verify_rc=$?
[ "$verify_rc" = 0 ] || { echo "rampart verify found problems (exit $verify_rc)" >&2; exit "$verify_rc"; }

ok=1
echo
echo "# demo done: 4 hosts installed, etcd healthy over mTLS, $converged, $cis, rampart verify found nothing wrong."
echo "# next: docs/getting-started.md installs a cluster of your own hosts; docs/backups.md sets up encrypted etcd backups; docs/verify.md audits a running cluster."
