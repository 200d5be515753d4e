#!/usr/bin/env bash
# The rampart real-VM lab, end to end: four Debian 12 VMs, upstream Kubernetes
# binaries, `rampart apply` with no phase skipped, then checks that the cluster
# is up and hardened. One PASS/FAIL line per check; exit status 1 if any fails.
#
#   vagrant/up.sh          (then vagrant/down.sh)
#
# Needs: vagrant with libvirt or VirtualBox, internet, ssh, ssh-keygen, curl,
# sha256sum, age and age-keygen, and rampart (on PATH, or RAMPART=/path/to/rampart).
# Everything it creates lives in vagrant/.lab (RAMPART_LAB_DIR): the SSH key,
# the age identity, the state dir, the downloaded binaries, the inventory.
#
# Settings (environment):
#   RAMPART                   rampart binary             (rampart on PATH, else target/{release,debug}/rampart)
#   RAMPART_LAB_PROVIDER      libvirt | virtualbox       (Vagrant's default)
#   RAMPART_LAB_K8S_VERSION   1.34, 1.34.1, v1.34.1      (1.34: the latest 1.34 patch)
#   RAMPART_LAB_NET, RAMPART_LAB_FIRST_IP, RAMPART_LAB_DIR, ... see the Vagrantfile
#   RAMPART_LAB_SSH_KEY       private key to use instead of .lab/id_ed25519 (its .pub must exist)
set -Eeuo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname -- "$HERE")
LAB=${RAMPART_LAB_DIR:-$HERE/.lab}
NET=${RAMPART_LAB_NET:-192.168.56}
FIRST_IP=${RAMPART_LAB_FIRST_IP:-11}
K8S_VERSION=${RAMPART_LAB_K8S_VERSION:-1.34}
CLUSTER=vagrant-lab

# The lab's hosts, in the Vagrantfile's order: name, roles.
NAMES=(cp1 cp2 cp3 worker1)
ROLES=("etcd, control-plane" "etcd, control-plane" "etcd, control-plane" "worker")

# Paths on the hosts, from templates/ (see the checks below).
AUDIT_LOG=/var/log/kubernetes/audit/audit.log
ETCDCTL=/usr/bin/etcdctl
ETCD_PKI=/etc/kubernetes/pki/etcd

die() {
	printf 'up.sh: %s\n' "$*" >&2
	exit 1
}

step() {
	printf '\n==> %s\n' "$*" >&2
}

ip_of() {
	printf '%s.%s' "$NET" "$((FIRST_IP + $1))"
}

# yaml_quote STRING: a single-quoted YAML scalar.
yaml_quote() {
	local s=$1
	printf "'%s'" "${s//\'/\'\'}"
}

# write_inventory FILE KEY KNOWN_HOSTS VERSION BINARIES_BLOCK
# The inventory for the lab VMs; BINARIES_BLOCK is fetch-kubernetes.sh's output.
write_inventory() {
	local file=$1 key=$2 known=$3 version=$4 binaries=$5 i
	{
		printf '%s\n' \
			"# rampart inventory for the Vagrant lab, written by vagrant/up.sh: edits are" \
			"# overwritten on the next run. Field reference: docs/inventory.md." \
			"" \
			"cluster:" \
			"  name: $CLUSTER" \
			"  kubernetesVersion: $version" \
			"  # No load balancer in the lab: cp1 is the endpoint (rampart warns: no failover)." \
			"  apiEndpoint: $(ip_of 0):6443" \
			"  nodeNetwork: $NET.0/24" \
			"" \
			"ssh:" \
			"  user: root" \
			"  identityFile: $(yaml_quote "$key")" \
			"  # Filled by \`rampart hosts trust\`; emptied by vagrant/down.sh." \
			"  knownHostsFile: $(yaml_quote "$known")" \
			"" \
			"hosts:"
		for i in "${!NAMES[@]}"; do
			printf '  - name: %s\n    address: %s\n    roles: [%s]\n' \
				"${NAMES[$i]}" "$(ip_of "$i")" "${ROLES[$i]}"
		done
		printf '\n%s\n' "$binaries"
	} >"$file.tmp"
	mv -f -- "$file.tmp" "$file"
}

find_rampart() {
	if [[ -n ${RAMPART:-} ]]; then
		[[ -x $RAMPART ]] || die "RAMPART=$RAMPART is not an executable"
		printf '%s\n' "$RAMPART"
	elif command -v rampart >/dev/null; then
		command -v rampart
	elif [[ -x $REPO/target/release/rampart ]]; then
		printf '%s\n' "$REPO/target/release/rampart"
	elif [[ -x $REPO/target/debug/rampart ]]; then
		printf '%s\n' "$REPO/target/debug/rampart"
	else
		die "rampart not found: cargo build --release, or set RAMPART=/path/to/rampart"
	fi
}

# --- checks -------------------------------------------------------------------

FAILED=0
CHECKS=0

pass() {
	CHECKS=$((CHECKS + 1))
	printf 'PASS %s\n' "$*"
}

fail() {
	CHECKS=$((CHECKS + 1))
	FAILED=$((FAILED + 1))
	printf 'FAIL %s\n' "$*"
}

# retry SECONDS CMD...: runs CMD every 3 s until it succeeds or SECONDS pass.
retry() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 3
	done
}

# ssh_host INDEX CMD: runs CMD as root on host INDEX, trusting only the host
# keys `rampart hosts trust` pinned in the lab's known_hosts file.
ssh_host() {
	local i=$1 ip alias=()
	shift
	ip=$(ip_of "$i")
	# rampart may record the host by address or by name; ssh looks up the address.
	if ! ssh-keygen -F "$ip" -f "$KNOWN_HOSTS" >/dev/null 2>&1 &&
		ssh-keygen -F "${NAMES[$i]}" -f "$KNOWN_HOSTS" >/dev/null 2>&1; then
		alias=(-o "HostKeyAlias=${NAMES[$i]}")
	fi
	ssh -i "$SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=10 \
		-o StrictHostKeyChecking=yes -o UserKnownHostsFile="$KNOWN_HOSTS" \
		-o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR ${alias[@]+"${alias[@]}"} \
		"root@$ip" "$@"
}

readyz_ok() {
	[[ $("${KUBECTL[@]}" get --raw /readyz 2>/dev/null) == ok ]]
}

all_nodes_registered() {
	local got n
	got=$("${KUBECTL[@]}" get nodes -o name 2>/dev/null) || return 1
	for n in "${NAMES[@]}"; do
		grep -qx "node/$n" <<<"$got" || return 1
	done
}

check_anonymous() {
	local code tls=(--cacert "$STATE/pki/ca.crt") note=""
	if [[ ! -f $STATE/pki/ca.crt ]]; then
		tls=(--insecure)
		note=" (no $STATE/pki/ca.crt: TLS not verified)"
	fi
	code=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 10 \
		"${tls[@]}" "https://$(ip_of 0):6443/api" || true)
	if [[ $code == 401 ]]; then
		pass "anonymous request to https://$(ip_of 0):6443/api is refused with 401$note"
	else
		fail "anonymous request to https://$(ip_of 0):6443/api: expected 401, got ${code:-nothing}$note"
	fi
}

check_admin() {
	if retry 120 readyz_ok; then
		pass "admin kubeconfig: kubectl get --raw /readyz says ok"
	else
		fail "admin kubeconfig: kubectl get --raw /readyz did not say ok within 120 s"
		return
	fi
	if retry 180 all_nodes_registered; then
		pass "kubectl get nodes lists ${NAMES[*]}"
	else
		fail "kubectl get nodes does not list all of ${NAMES[*]} after 180 s"
	fi
	"${KUBECTL[@]}" get nodes -o wide || true
}

# Creates a Secret with a random value, reads its etcd key on cp1 and the audit
# log on cp1 (the apiEndpoint, so cp1's apiserver served the request).
check_secret_and_audit() {
	local name value raw prefix counts lines named leaked
	name="rampart-lab-probe-$(date +%s)"
	value="plaintext-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
	if ! "${KUBECTL[@]}" -n default create secret generic "$name" --from-literal="probe=$value" >/dev/null; then
		fail "kubectl create secret generic $name failed"
		fail "audit log not checked (no secret to look for)"
		return
	fi
	raw="$WORK/etcd-value"
	if ssh_host 0 "ETCDCTL_API=3 $ETCDCTL --endpoints=https://127.0.0.1:2379 \
		--cacert=$ETCD_PKI/ca.crt --cert=$ETCD_PKI/healthcheck-client.crt \
		--key=$ETCD_PKI/healthcheck-client.key \
		get --print-value-only /registry/secrets/default/$name" >"$raw"; then
		prefix=$(LC_ALL=C grep -ao '^k8s:enc:[a-z]*:v[0-9]*:[^:]*:' "$raw" | head -n 1 || true)
		if [[ ! -s $raw ]]; then
			fail "etcd on cp1 has no value at /registry/secrets/default/$name"
		elif [[ $(head -c 8 "$raw" | tr -d '\0') != "k8s:enc:" ]]; then
			fail "secret $name is stored in etcd without the k8s:enc: prefix (not encrypted at rest)"
		elif LC_ALL=C grep -aqF -- "$value" "$raw"; then
			fail "secret $name: the plaintext value is readable in etcd"
		else
			pass "secret $name is encrypted in etcd (${prefix:-k8s:enc:…}), plaintext absent"
		fi
	else
		fail "etcdctl get /registry/secrets/default/$name over ssh on cp1 failed"
	fi

	# lines, events naming the secret, lines holding its value (Metadata level: none)
	if counts=$(ssh_host 0 "test -s $AUDIT_LOG && echo \$(wc -l <$AUDIT_LOG) \
		\$(grep -cF '\"name\":\"$name\"' $AUDIT_LOG) \$(grep -cF '$value' $AUDIT_LOG)"); then
		read -r lines named leaked <<<"$counts"
		if ((lines > 0 && named > 0 && leaked == 0)); then
			pass "audit log $AUDIT_LOG on cp1: $lines entries, $named about secret $name, value not logged"
		else
			fail "audit log $AUDIT_LOG on cp1: $lines entries, $named about secret $name (want > 0), $leaked with its value (want 0)"
		fi
	else
		fail "audit log $AUDIT_LOG on cp1 is missing or empty"
	fi
	"${KUBECTL[@]}" -n default delete secret "$name" >/dev/null || true
}

# --- main -----------------------------------------------------------------------

main() {
	[[ $# -eq 0 ]] || die "no arguments expected; settings are environment variables (see the top of $0)"
	[[ $NET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "RAMPART_LAB_NET=$NET is not three octets such as 192.168.56"
	if ! [[ $FIRST_IP =~ ^[1-9][0-9]{0,2}$ ]] || ((FIRST_IP < 2 || FIRST_IP > 250)); then
		die "RAMPART_LAB_FIRST_IP=$FIRST_IP must be 2..250"
	fi
	local tool
	for tool in vagrant ssh ssh-keygen curl sha256sum age age-keygen; do
		command -v "$tool" >/dev/null || die "$tool is missing; see vagrant/README.md (requirements)"
	done
	RAMPART=$(find_rampart)
	trap 'printf "up.sh: failed at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

	mkdir -p -- "$LAB"
	chmod 0700 "$LAB"
	LAB=$(cd -- "$LAB" && pwd)
	# down.sh --purge only deletes a directory carrying this marker.
	touch "$LAB/.rampart-lab"
	export RAMPART_LAB_DIR=$LAB RAMPART_LAB_NET=$NET RAMPART_LAB_FIRST_IP=$FIRST_IP
	export VAGRANT_CWD=$HERE

	step "keys"
	SSH_KEY=${RAMPART_LAB_SSH_KEY:-$LAB/id_ed25519}
	if [[ ! -f $SSH_KEY ]]; then
		[[ -z ${RAMPART_LAB_SSH_KEY:-} ]] || die "RAMPART_LAB_SSH_KEY=$SSH_KEY does not exist"
		ssh-keygen -q -t ed25519 -N '' -C rampart-lab -f "$SSH_KEY"
	fi
	[[ -f $SSH_KEY.pub ]] || die "$SSH_KEY.pub is missing (ssh-keygen -y -f $SSH_KEY > $SSH_KEY.pub)"
	# Absolute: the inventory resolves relative paths against its own folder.
	SSH_KEY=$(cd -- "$(dirname -- "$SSH_KEY")" && pwd)/$(basename -- "$SSH_KEY")
	export RAMPART_LAB_PUBKEY=$SSH_KEY.pub
	KNOWN_HOSTS=$LAB/known_hosts
	# The age identity that unlocks the state dir (no passphrase prompt).
	export RAMPART_IDENTITY=$LAB/identity.txt
	if [[ ! -f $RAMPART_IDENTITY ]]; then
		age-keygen -o "$RAMPART_IDENTITY" 2>/dev/null
		chmod 0600 "$RAMPART_IDENTITY"
	fi
	export RAMPART_STATE_DIR=$LAB/state
	STATE=$RAMPART_STATE_DIR
	printf 'ssh key %s, age identity %s, state dir %s\n' "$SSH_KEY" "$RAMPART_IDENTITY" "$STATE" >&2

	step "Kubernetes binaries"
	local version binaries
	version=$(bash "$HERE/fetch-kubernetes.sh" --resolve "$K8S_VERSION")
	binaries=$(bash "$HERE/fetch-kubernetes.sh" "$version" "$LAB/artifacts/$version")

	step "vagrant up"
	local up_args=()
	[[ -z ${RAMPART_LAB_PROVIDER:-} ]] || up_args=(--provider "$RAMPART_LAB_PROVIDER")
	vagrant up ${up_args[@]+"${up_args[@]}"}

	step "inventory"
	INVENTORY=$LAB/inventory.yaml
	write_inventory "$INVENTORY" "$SSH_KEY" "$KNOWN_HOSTS" "$version" "$binaries"
	printf '%s\n' "$INVENTORY" >&2

	step "rampart check"
	"$RAMPART" check -i "$INVENTORY"
	step "rampart init"
	"$RAMPART" init -i "$INVENTORY"
	step "rampart hosts trust"
	"$RAMPART" hosts trust -i "$INVENTORY" --yes
	step "rampart plan"
	"$RAMPART" plan -i "$INVENTORY"
	step "rampart apply"
	"$RAMPART" apply -i "$INVENTORY"

	step "checks"
	WORK=$(mktemp -d)
	trap 'rm -rf -- "$WORK"' EXIT
	umask 077
	# The break-glass kubeconfig `rampart init` wrote: sealed to the state key,
	# which is sealed to the admin's identity (src/pki/store.rs).
	age -d -i "$RAMPART_IDENTITY" -o "$WORK/state-key" "$STATE/state-key.age"
	age -d -i "$WORK/state-key" -o "$WORK/super-admin.conf" "$STATE/super-admin.conf.age"
	local kubectl=kubectl
	if [[ $(uname -sm) == "Linux x86_64" ]]; then
		kubectl=$LAB/artifacts/$version/kubectl
	elif ! command -v kubectl >/dev/null; then
		die "the downloaded kubectl is for linux/amd64: install kubectl $version on PATH"
	fi
	KUBECTL=("$kubectl" --kubeconfig "$WORK/super-admin.conf")
	# A failing check is reported, not fatal: every check runs.
	trap - ERR
	set +e
	check_anonymous
	check_admin
	check_secret_and_audit
	set -e

	printf '\n%d checks, %d failed\n' "$CHECKS" "$FAILED"
	if ((FAILED > 0)); then
		printf 'VMs left running for inspection: cd vagrant && vagrant ssh cp1; vagrant/down.sh removes them\n' >&2
		exit 1
	fi
	printf 'kubeconfig: %s (sealed; see vagrant/README.md)\nremove the lab with vagrant/down.sh\n' "$STATE/super-admin.conf.age" >&2
}

# Sourcing the file (tests) defines the functions without running anything.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
