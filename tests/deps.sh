#!/usr/bin/env bash
# Installs the Debian packages rampart's tests and demo use. Idempotent; root only.
# etcd-server's package would start an etcd on 127.0.0.1:2379 where systemd runs;
# a policy-rc.d keeps it stopped: the tests start their own members.
set -euo pipefail
pkgs=(openssl etcd-server etcd-client age systemd ca-certificates openssh-server openssh-client sudo)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "tests/deps.sh: missing packages ${missing[*]}; run as root to install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ $created_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The ssh tests start their own sshd on loopback; the distribution's stays off
# (policy-rc.d only stops it starting now, not at the next boot of this root).
systemctl disable --quiet ssh.service 2>/dev/null || true
systemctl disable --quiet ssh.socket 2>/dev/null || true
# The same for Debian's etcd: the tests start their own members.
systemctl disable --quiet etcd.service 2>/dev/null || true
