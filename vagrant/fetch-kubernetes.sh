#!/usr/bin/env bash
# Downloads the upstream Kubernetes server binaries rampart uploads, checks them
# against their published sha256, and prints the inventory block that pins them.
#
#   fetch-kubernetes.sh VERSION DIR     VERSION: v1.34.1, 1.34.1 or 1.34 (latest patch)
#   fetch-kubernetes.sh --resolve VERSION   print the exact version only (v1.34.1)
#
# Binaries: kube-apiserver kube-controller-manager kube-scheduler kubelet
# kube-proxy kubectl, for linux/amd64 (KUBE_ARCH=arm64 for others), from
# https://dl.k8s.io/release/<version>/bin/linux/<arch>/ with the `.sha256` file
# published next to each. A binary already in DIR with the right checksum is not
# downloaded again. etcd is not fetched: the hosts use Debian's etcd-server.
#
# stdout is only the YAML block for the inventory (progress goes to stderr):
#
#   binaries:
#     artifacts: /abs/DIR
#     sha256:
#       kube-apiserver: 9f1c...
#
# The .sha256 files come from the same HTTPS server as the binaries: they catch
# corrupt or truncated downloads, not a compromised dl.k8s.io. For that, verify
# the published cosign signatures as well (https://kubernetes.io/docs/tasks/administer-cluster/verify-signed-artifacts/).
set -euo pipefail

BASE_URL=${KUBE_DL_URL:-https://dl.k8s.io/release}
ARCH=${KUBE_ARCH:-amd64}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

die() {
	printf 'fetch-kubernetes: %s\n' "$*" >&2
	exit 1
}

log() {
	printf 'fetch-kubernetes: %s\n' "$*" >&2
}

usage() {
	printf 'usage: %s VERSION DIR\n       %s --resolve VERSION\n' "$0" "$0" >&2
	exit 2
}

# fetch URL FILE: HTTPS only, fail on HTTP errors, a few retries.
fetch() {
	curl --fail --location --silent --show-error \
		--proto '=https' --proto-redir '=https' --tlsv1.2 \
		--connect-timeout 20 --retry 3 --retry-delay 2 \
		--output "$2" "$1"
}

# resolve VERSION: v1.34.1 for v1.34.1 / 1.34.1; the current patch for 1.34.
resolve() {
	local v=${1#v} stable
	if [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]]; then
		printf 'v%s\n' "$v"
		return
	fi
	[[ $v =~ ^[0-9]+\.[0-9]+$ ]] || die "\`$1\` is not a Kubernetes version (v1.34.1, 1.34.1 or 1.34)"
	stable=$(curl --fail --location --silent --show-error --proto '=https' --tlsv1.2 \
		--connect-timeout 20 --retry 3 "$BASE_URL/stable-$v.txt") ||
		die "cannot read $BASE_URL/stable-$v.txt (is $v released?)"
	[[ $stable =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$BASE_URL/stable-$v.txt says \`$stable\`, not a version"
	printf '%s\n' "$stable"
}

# yaml_quote STRING: a single-quoted YAML scalar.
yaml_quote() {
	local s=$1
	printf "'%s'" "${s//\'/\'\'}"
}

main() {
	if [[ ${1:-} == --resolve ]]; then
		[[ $# -eq 2 ]] || usage
		resolve "$2"
		return
	fi
	[[ $# -eq 2 ]] || usage
	command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
	command -v sha256sum >/dev/null || die "sha256sum is missing (coreutils)"
	[[ $ARCH =~ ^[a-z0-9]+$ ]] || die "KUBE_ARCH=$ARCH is not an architecture name (amd64, arm64)"

	local version dir tmp b url sum
	version=$(resolve "$1")
	dir=$2
	mkdir -p -- "$dir"
	dir=$(cd -- "$dir" && pwd)
	tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
	# shellcheck disable=SC2064 # expand now: tmp is local to main
	trap "rm -rf -- '$tmp'" EXIT

	local sums=()
	log "Kubernetes $version linux/$ARCH into $dir"
	for b in "${BINARIES[@]}"; do
		url="$BASE_URL/$version/bin/linux/$ARCH/$b"
		fetch "$url.sha256" "$tmp/$b.sha256" || die "cannot download $url.sha256"
		sum=$(tr -d '[:space:]' <"$tmp/$b.sha256")
		[[ $sum =~ ^[0-9a-f]{64}$ ]] || die "$url.sha256 does not hold a sha256"
		if [[ -f $dir/$b ]] && (cd -- "$dir" && printf '%s  %s\n' "$sum" "$b" | sha256sum --check --status -); then
			log "$b: present, sha256 ok"
		else
			log "$b: downloading $url"
			fetch "$url" "$tmp/$b" || die "cannot download $url"
			(cd -- "$tmp" && printf '%s  %s\n' "$sum" "$b" | sha256sum --check -) >&2 ||
				die "$b does not match $url.sha256: download it again"
			chmod 0755 "$tmp/$b"
			mv -f -- "$tmp/$b" "$dir/$b"
		fi
		sums+=("$sum")
	done

	printf '# Kubernetes %s linux/%s from %s, checked with sha256sum -c\n' "$version" "$ARCH" "$BASE_URL"
	printf 'binaries:\n  artifacts: %s\n  sha256:\n' "$(yaml_quote "$dir")"
	local i
	for i in "${!BINARIES[@]}"; do
		printf '    %s: %s\n' "${BINARIES[$i]}" "${sums[$i]}"
	done
}

main "$@"
