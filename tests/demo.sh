#!/usr/bin/env bash
# The main job end to end on the local lab (what README's first command runs):
# build rampart, bring up 4 real hosts (systemd-nspawn: systemd, OpenSSH,
# Debian's etcd), create the cluster PKI, pin the hosts' SSH keys, plan,
# `rampart apply` the lab inventory, show the etcd cluster healthy over mTLS,
# re-apply (no changes), run the CIS self-check on the rendered bundle, and
# take the lab down again (KEEP_LAB=1 leaves it running).
#
# The lab has no Kubernetes binaries (no internet needed), so the
# control-plane and node start phases are skipped: their units are installed,
# verified and enabled; etcd really runs. With an artifacts dir of upstream
# binaries (vagrant/ or your own), nothing needs skipping.
#
# Usage: bash tests/demo.sh        (as root on Debian 12; installs its packages)
set -euo pipefail
cd "$(dirname "$0")/.."
inventory=inventories/lab.yaml
# CIS checks: the catalogue built into rampart; RAMPART_CIS_BENCHMARK=FILE evaluates other definitions.
benchmark=${RAMPART_CIS_BENCHMARK:-}
lab=tests/lab/testhosts.sh
skip=start-control-plane,apply-manifests,start-nodes

bash tests/deps.sh
bash "$lab" deps
# The dev profile, as the tests build it: `bash tests/run.sh` afterwards reuses
# this build instead of compiling every crate a second time.
echo "# building rampart: about 10 min on 2 cores the first time (cargo lists each crate), seconds after" >&2
cargo build
rampart=$(readlink -f "${CARGO_TARGET_DIR:-target}/debug/rampart")

work=$(mktemp -d /tmp/rampart-demo.XXXXXX)
chmod 700 "$work"
cleanup() {
  if [ "${KEEP_LAB:-0}" = 1 ]; then
    echo "# lab left running (KEEP_LAB=1): bash $lab down"
  else
    bash "$lab" down >/dev/null
  fi
}
trap cleanup EXIT
echo "# working in $work"
step() { printf '\n$ %s\n' "$*"; "$@"; }
# Everything that talks to the hosts runs inside the lab's network namespace.
inlab() { printf '\n$ %s\n' "$*"; bash "$lab" exec "$@"; }

# Fresh hosts: a lab left over from an earlier run is taken down first.
bash "$lab" down >/dev/null 2>&1 || true
step bash "$lab" up 4 >/dev/null

age-keygen -o "$work/admin-identity.txt" 2>/dev/null
export RAMPART_IDENTITY=$work/admin-identity.txt RAMPART_STATE_DIR=$work/state

step "$rampart" check -i "$inventory"
step "$rampart" init -i "$inventory" >/dev/null
inlab "$rampart" hosts trust -i "$inventory"
inlab "$rampart" plan -i "$inventory" --skip-phases "$skip" | grep -v '^  ' || true
inlab "$rampart" apply -i "$inventory" --skip-phases "$skip"

printf '\n# etcd, asked on cp1 with the healthcheck client certificate:\n'
bash "$lab" ssh 1 "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
  --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
  --key=/etc/kubernetes/pki/etcd/healthcheck-client.key endpoint health --cluster -w table"
bash "$lab" ssh 1 "systemctl is-enabled kube-apiserver kubelet | paste -sd' '; stat -c '%A %U:%G %n' /var/lib/etcd /etc/kubernetes/pki/ca.key"

inlab "$rampart" apply -i "$inventory" --skip-phases "$skip"    # again: no changes

step "$rampart" render -i "$inventory" --out "$work/bundle" >/dev/null
cis=("$rampart" cis check --bundle "$work/bundle" ${benchmark:+--benchmark "$benchmark"})
printf '\n$ %s\n' "${cis[*]}"
"${cis[@]}" | tail -n 8
echo
echo "state dir (sealed): $work/state   bundle: $work/bundle   identity: $work/admin-identity.txt"
