#!/usr/bin/env bash
# Provisions one rampart lab VM (Debian 12). Vagrant runs it as root:
#
#   provision.sh NAME ROLES HOSTS PUBKEY
#     NAME    cp1                               (the VM's name)
#     ROLES   etcd,control-plane | worker       (comma-separated inventory roles)
#     HOSTS   cp1=192.168.56.11,cp2=...         (every lab VM, for /etc/hosts)
#     PUBKEY  ssh-ed25519 AAAA... comment       (the key root accepts)
#
# It installs what rampart expects to find on a host (Debian's etcd, containerd,
# runc, conntrack, socat, iptables, age) and prepares the kernel, swap and sshd.
# It does not install Kubernetes: `rampart apply` uploads those binaries.
#
# Safe to rerun (`vagrant provision`): every file is rewritten only when its
# content changes, and nothing rampart installed is touched. In particular,
# once rampart has written /etc/systemd/system/etcd.service, etcd is left alone.
set -euo pipefail

die() {
	printf 'provision: %s\n' "$*" >&2
	exit 1
}

[[ $# -eq 4 ]] || die "usage: provision.sh NAME ROLES HOSTS PUBKEY (got $# arguments)"
name=$1
roles=$2
hosts=$3
pubkey=$4

[[ -n $pubkey ]] || die "no public key given: run \`vagrant up\` or \`vagrant provision\`, which pass it"
[[ $pubkey =~ ^(ssh-|ecdsa-|sk-)[^[:space:]]+\ [A-Za-z0-9+/=]+( .*)?$ ]] ||
	die "not an OpenSSH public key: ${pubkey:0:40}..."

log() {
	printf '%s: %s\n' "$name" "$*"
}

has_role() {
	[[ ",$roles," == *",$1,"* ]]
}

# write_file PATH MODE < CONTENT: installs CONTENT at PATH (root:root, MODE).
# Status 0 when the file changed, 1 when it already had this content. Callers
# test the status, which turns off `set -e` inside: hence the explicit dies.
write_file() {
	local path=$1 mode=$2 tmp
	tmp=$(mktemp) || die "mktemp failed"
	cat >"$tmp" || die "cannot buffer $path"
	if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
		rm -f "$tmp"
		return 1
	fi
	install -D -m "$mode" -o root -g root "$tmp" "$path" || die "cannot write $path"
	rm -f "$tmp"
	log "wrote $path"
}

installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

export DEBIAN_FRONTEND=noninteractive

# --- packages ---------------------------------------------------------------
packages=(containerd runc conntrack socat iptables ethtool age curl ca-certificates openssl)
if has_role etcd; then
	packages+=(etcd-server etcd-client)
fi
# The preflight refuses a clock more than 60 s off the admin's: keep NTP on,
# unless the box already has another NTP client.
if ! installed chrony && ! installed ntp && ! installed ntpsec && ! installed openntpd; then
	packages+=(systemd-timesyncd)
fi

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
	log "installing ${missing[*]}"
	# Keep the packages' services from starting at install: Debian's etcd would
	# start a single-member cluster on 2379/2380 (rampart's preflight refuses
	# ports in use) and leave data in /var/lib/etcd/default.
	# (deb-systemd-invoke and invoke-rc.d both ask policy-rc.d; 101 = "don't".)
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		trap 'rm -f "$policy"' EXIT
		printf '#!/bin/sh\n# rampart lab provisioning: no service starts during apt-get install\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
	fi
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
	if [[ -e $policy ]] && grep -q 'rampart lab provisioning' "$policy"; then
		rm -f "$policy"
	fi
	trap - EXIT
fi

if installed systemd-timesyncd; then
	systemctl enable --now systemd-timesyncd.service >/dev/null
fi

# --- etcd: installed, not running -------------------------------------------
# rampart writes its own unit to /etc/systemd/system/etcd.service (which takes
# precedence over Debian's /lib/systemd/system/etcd.service) and starts it.
if has_role etcd; then
	if [[ -e /etc/systemd/system/etcd.service ]]; then
		log "etcd: unit installed by rampart, left alone"
	else
		if systemctl is-enabled --quiet etcd.service 2>/dev/null ||
			systemctl is-active --quiet etcd.service 2>/dev/null; then
			systemctl disable --now etcd.service
			log "etcd: Debian's unit stopped and disabled"
		fi
		# Debian's own data dir (ETCD_DATA_DIR in its unit); rampart uses
		# /var/lib/etcd itself and never this subdirectory.
		rm -rf /var/lib/etcd/default
	fi
fi

# --- kernel: modules, sysctls, swap -------------------------------------------
write_file /etc/modules-load.d/rampart-lab.conf 0644 <<'EOF' || true
# rampart lab: container runtime and kube-proxy (iptables on bridged traffic)
overlay
br_netfilter
EOF
modprobe overlay
modprobe br_netfilter

write_file /etc/sysctl.d/80-rampart-lab.conf 0644 <<'EOF' || true
# rampart lab: routing between pods and services
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF
sysctl -q -p /etc/sysctl.d/80-rampart-lab.conf

# The kubelet refuses to start with swap on (failSwapOn: true).
if [[ -n $(swapon --show --noheadings) ]]; then
	swapoff -a
	log "swap off"
fi
if grep -Eq '^[^#[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]]' /etc/fstab; then
	sed -i -E 's/^([^#[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]])/#\1/' /etc/fstab
	log "swap commented out in /etc/fstab"
fi

# --- containerd ---------------------------------------------------------------
# The kubelet uses the systemd cgroup driver (templates/kubernetes/kubelet-config.yaml),
# so runc must too. Debian puts the CNI plugins (if installed) in /usr/lib/cni.
config=$(containerd config default)
config=$(sed -E \
	-e 's/SystemdCgroup = false/SystemdCgroup = true/' \
	-e 's#sandbox_image = ".*"#sandbox_image = "registry.k8s.io/pause:3.10"#' \
	-e 's#bin_dir = "/opt/cni/bin"#bin_dir = "/usr/lib/cni"#' <<<"$config")
grep -q 'SystemdCgroup = true' <<<"$config" ||
	die "containerd's default config has no SystemdCgroup setting: check the containerd version"
if printf '# Written by the rampart lab (vagrant/provision.sh).\n%s\n' "$config" |
	write_file /etc/containerd/config.toml 0644; then
	systemctl restart containerd.service
fi
systemctl enable --now containerd.service >/dev/null

# --- names of the lab hosts -----------------------------------------------------
block="# BEGIN rampart-lab"$'\n'
IFS=',' read -r -a pairs <<<"$hosts"
for pair in "${pairs[@]}"; do
	[[ $pair =~ ^([a-z0-9-]+)=([0-9.]+)$ ]] || die "bad HOSTS entry: $pair"
	block+="${BASH_REMATCH[2]} ${BASH_REMATCH[1]}"$'\n'
done
block+="# END rampart-lab"
# Everything but an earlier block, then the current block.
hosts_file=$(sed '/^# BEGIN rampart-lab$/,/^# END rampart-lab$/d' /etc/hosts)
printf '%s\n%s\n' "$hosts_file" "$block" | write_file /etc/hosts 0644 || true

# --- SSH: root logs in with the admin's key only ----------------------------------
install -d -m 0700 -o root -g root /root/.ssh
touch /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
if ! grep -qxF -- "$pubkey" /root/.ssh/authorized_keys; then
	printf '%s\n' "$pubkey" >>/root/.ssh/authorized_keys
	log "admin key added to /root/.ssh/authorized_keys"
fi
# sshd_config.d files come first in Debian's sshd_config, and the first value wins.
if write_file /etc/ssh/sshd_config.d/10-rampart-lab.conf 0644 <<'EOF'; then
# rampart lab: root by key only (rampart connects as root).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
EOF
	sshd -t
	systemctl reload ssh.service
fi

log "provisioned ($roles)"
