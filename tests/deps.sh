#!/usr/bin/env bash
# Installs the Debian packages rampart's tests and demo use. Idempotent; root only.
# etcd-server's package would start an etcd on 127.0.0.1:2379 where systemd runs;
# a policy-rc.d keeps it stopped: the tests start their own members.
set -euo pipefail
pkgs=(openssl etcd-server etcd-client age systemd ca-certificates openssh-server openssh-client sudo)
# Debian enables the services of etcd-server and openssh-server at boot; the
# tests start their own etcd members and sshd on loopback, so the admin
# machine's stay off: disabled (and stopped where systemd runs them). Run on
# every call, not only after an install: a machine set up by an older deps.sh
# had etcd left enabled. Quiet unless something is to be done.
services_off() {
  local unit
  for unit in etcd.service ssh.service ssh.socket; do
    if [ -d /run/systemd/system ]; then
      # systemd is PID 1 (sd_booted(3)'s test): it can stop the unit as well.
      if systemctl --quiet is-enabled "$unit" 2>/dev/null || systemctl --quiet is-active "$unit" 2>/dev/null; then
        [ "$(id -u)" -eq 0 ] || { echo "tests/deps.sh: $unit is enabled; run as root to disable it" >&2; continue; }
        systemctl disable --now --quiet "$unit" 2>/dev/null || true
        echo "tests/deps.sh: disabled and stopped the distribution's $unit (the tests run their own)"
      fi
    elif compgen -G "/etc/systemd/system/*.wants/$unit" >/dev/null; then
      # No systemd running (a container): nothing runs the unit now; remove
      # its enablement the way the package's own scripts would, so that an
      # upgrade does not enable it again.
      [ "$(id -u)" -eq 0 ] || { echo "tests/deps.sh: $unit is enabled; run as root to disable it" >&2; continue; }
      if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
      fi
      rm -f /etc/systemd/system/*.wants/"$unit"
      echo "tests/deps.sh: disabled the distribution's $unit at boot (the tests run their own)"
    fi
  done
}
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  services_off
  exit 0
fi
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
services_off
