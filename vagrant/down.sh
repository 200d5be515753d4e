#!/usr/bin/env bash
# Destroys the rampart lab VMs (vagrant destroy -f) and forgets their host keys.
#
#   vagrant/down.sh            VMs gone; keys, age identity, state dir and the
#                              downloaded binaries stay in vagrant/.lab for the next up.sh
#   vagrant/down.sh --purge    also delete vagrant/.lab (RAMPART_LAB_DIR) entirely,
#                              including the cluster's state dir (its CAs and keys)
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
LAB=${RAMPART_LAB_DIR:-$HERE/.lab}

die() {
	printf 'down.sh: %s\n' "$*" >&2
	exit 1
}

main() {
	local purge=false
	case ${1:-} in
	"") ;;
	--purge) purge=true ;;
	*) die "usage: $0 [--purge]" ;;
	esac
	command -v vagrant >/dev/null || die "vagrant is missing"

	export VAGRANT_CWD=$HERE RAMPART_LAB_DIR=$LAB
	vagrant destroy -f

	# New VMs get new host keys: the pinned ones would only cause a mismatch.
	rm -f -- "$LAB/known_hosts" "$LAB/known_hosts.old"

	if [[ $purge == true && -d $LAB ]]; then
		# Only a directory up.sh made (it leaves this marker), never a path
		# RAMPART_LAB_DIR happens to point at.
		[[ -f $LAB/.rampart-lab ]] || die "$LAB has no .rampart-lab marker: not deleting it"
		rm -rf -- "$LAB"
		printf 'down.sh: removed %s\n' "$LAB" >&2
	fi
}

main "$@"
