#!/usr/bin/env bash
# tests/lab/testhosts.sh - the rampart test lab: throwaway Debian "hosts" on
# this machine that rampart reaches over real SSH (see docs/lab.md).
# Derived from the measured recipe in shared/lab-reference/testhosts.sh.
#
# Each host is a systemd-nspawn container booted with a real systemd as PID 1
# (`systemd-nspawn --boot`) on a copy-on-write overlayfs view of one
# debootstrapped Debian rootfs.  Every host has
#   * its own network namespace and IP (veth into a private bridge),
#   * a real OpenSSH server (Debian openssh-server), key-only logins for root
#     and for `deploy` (non-root, passwordless sudo: for `become: sudo`),
#     unique host keys (a matching known_hosts file is written for you),
#   * its own filesystem (/etc/kubernetes, /var/lib/etcd, /etc/systemd/system
#     ... all private), its own machine-id and hostname,
#   * etcd-server/etcd-client (installed, disabled), age, openssl, sudo,
#   * working `systemctl daemon-reload / enable --now`, timers, journald,
#     `systemctl reboot` (the host comes back) and `poweroff`.
#
# Network layout.  No address is added to the machine's own network namespace;
# the "operator" side (where ssh and the tests run) is a namespace of its own:
#
#   netns rl-lab : bridge rl-br0 10.77.0.1/24       <- run ssh / test binaries here
#      +-- veth rl-h1 ==== eth0 10.77.0.11/24  in netns rl-h1 (container rl1)
#      +-- veth rl-h2 ==== eth0 10.77.0.12/24  in netns rl-h2 (container rl2)
#      ...
#   With TH_BASTION=1, host 1 is a jump host and hosts 2..N sit on a second
#   network the operator has no link to:
#   netns rl-lab   : bridge rl-br0 10.77.0.1/24
#      +-- veth rl-h1  ==== eth0 10.77.0.11/24  rl1 (bastion)
#   netns rl-inner : bridge rl-br1, no address (the operator cannot reach it)
#      +-- veth rl-h1i ==== eth1 10.77.1.11/24  rl1 (bastion, second leg)
#      +-- veth rl-h2  ==== eth0 10.77.1.12/24  rl2
#      ...
#   The bastion does not forward packets: hosts 2..N are reached with ssh
#   ProxyJump (sshd's TCP forwarding), as through a real jump host.
#
#   None of these namespaces has a default route, so no packet can leave the
#   lab.  The only change in the machine's own namespace is a guard route
#   `unreachable 10.77.0.0/24` (and 10.77.1.0/24 with a bastion) while the
#   lab is up: a program started outside the lab by mistake gets "No route to
#   host" instead of sending lab traffic out of the machine's default route.
#   So: run whatever talks to the hosts with `testhosts.sh exec ...` (or
#   `ip netns exec rl-lab ...`).
#
# Usage (as root):
#   testhosts.sh deps            apt-get install what this script needs
#   testhosts.sh build [--force] debootstrap the base rootfs -> cached squashfs image
#   testhosts.sh up N            start hosts 1..N, wait until each answers
#                                `systemctl is-system-running` over ssh.
#                                Idempotent: a healthy set of N hosts is left
#                                alone, anything else is torn down and rebuilt.
#   testhosts.sh down            stop and remove everything `up` created
#                                (idempotent; safe after a failed/half `up`)
#   testhosts.sh ssh I [CMD...]  ssh root@host I (from the lab namespace)
#   testhosts.sh exec CMD...     run CMD inside the lab namespace, e.g. the
#                                test binary of rampart
#   testhosts.sh env             print host names, IPs and key paths (sh syntax;
#                                the same is in $TH_STATE/hosts.env and .json)
#   testhosts.sh status          per host: state, processes, memory (PSS)
#
# Environment knobs (defaults in brackets):
#   TH_PREFIX [rl]   names: <p>-lab, <p>-br0, <p>-h<I>, hostnames <p><I>
#   TH_NET    [10.77.0]  /24 used inside the lab (must be 10.x.y or 192.168.x)
#             (two labs at once need different TH_PREFIX *and* TH_NET)
#   TH_BASTION [0]   1: host 1 is a jump host, hosts 2..N only behind it
#   TH_INNER_NET [TH_NET with the 3rd octet + 1]  /24 behind the bastion
#   TH_STATE  [/var/tmp/rampart-lab]  runtime state; removed by `down`
#   TH_CLIENT_DIR [/var/lib/rampart-lab/ssh]  the lab key `id_ed25519` (0600)
#             and `known_hosts`, written by `up`, removed by `down`
#             (inventories/lab.yaml points at these two files)
#             (for TH_PREFIX other than rl, both defaults get a -<prefix> suffix)
#   TH_CACHE  [/var/cache/rampart-lab]  cached base rootfs image (kept)
#   TH_SUITE  [bookworm] TH_MIRROR [first URI of the machine's apt sources]
#   TH_EXTRA_PACKAGES   comma-separated extra packages baked into the rootfs
#   TH_AUTHORIZED_KEYS  a public-key file also authorized for root and deploy
#   TH_BOOT_TIMEOUT [90] seconds to wait for a host to be up
#   TH_HOSTKEY_TYPES [ed25519 ecdsa]  ssh host key types per host; add "rsa"
#                       if the ssh client under test needs it (~0.7 s/host)
#   TH_KUBELET [0]   1: hosts can run a kubelet and containers (see "Kubelet
#                       mode" in docs/lab.md): own v1 controller cgroups made
#                       writable inside, /dev/kmsg, a real-filesystem
#                       /var/lib/containerd, and the kernel settings the
#                       kubelet insists on set on this machine while labs run
#
# Cleanup model: every resource is written to a journal file *before* it is
# created (per host: $TH_STATE/hosts/<name>/created, global: $TH_STATE/created);
# `down` undoes the journals in reverse order.  Processes are only ever
# signalled by PID, after checking the PID's start time still matches what we
# recorded, or via the per-host cgroup this script created for them.

set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
TH_PREFIX=${TH_PREFIX:-rl}
# Defaults for a second lab side by side (other TH_PREFIX) do not collide with the first.
if [ "$TH_PREFIX" = rl ]; then _sfx=""; else _sfx="-$TH_PREFIX"; fi
TH_STATE=${TH_STATE:-/var/tmp/rampart-lab$_sfx}
TH_CLIENT_DIR=${TH_CLIENT_DIR:-/var/lib/rampart-lab/ssh$_sfx}
TH_CACHE=${TH_CACHE:-/var/cache/rampart-lab}
TH_NET=${TH_NET:-10.77.0}
TH_BASTION=${TH_BASTION:-0}
TH_SUITE=${TH_SUITE:-bookworm}
TH_BOOT_TIMEOUT=${TH_BOOT_TIMEOUT:-90}
TH_EXTRA_PACKAGES=${TH_EXTRA_PACKAGES:-}
TH_AUTHORIZED_KEYS=${TH_AUTHORIZED_KEYS:-}
TH_HOSTKEY_TYPES=${TH_HOSTKEY_TYPES:-ed25519 ecdsa}
TH_KUBELET=${TH_KUBELET:-0}

# Packages baked into the base image (Debian names).  libpam-systemd + dbus give
# each ssh login a logind session like on a real server.
# sudo: the non-root user `deploy` (become: sudo); age: rampart encrypts backups with it.
# containerd, runc and the CNI plugins: the node runtime rampart configures
# (installed, not enabled: hosts start bare).
TH_PACKAGES="systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,sudo,etcd-server,etcd-client,age,iproute2,ca-certificates,procps,curl,openssl,less,containerd,runc,containernetworking-plugins,iptables,conntrack,busybox-static${TH_EXTRA_PACKAGES:+,$TH_EXTRA_PACKAGES}"
# Bump when the image customisation below changes (invalidates the cache).
# 4: rampart lab (sudo, age, user deploy)
# 5: containerd, runc, CNI plugins, iptables, conntrack (disabled); kubelet
#    mode; busybox-static (the lab tests build their container images from it)
TH_IMAGE_REV=5
# Non-root login user in every host: lab key authorized, passwordless sudo.
DEPLOY_USER=deploy

# A running lab remembers the settings it was made with (TH_NET ...), so that
# ssh/status/down work without repeating them.
TH_NET_REQUESTED=$TH_NET
TH_BASTION_REQUESTED=$TH_BASTION
TH_KUBELET_REQUESTED=$TH_KUBELET
TH_INNER_NET_REQUESTED=${TH_INNER_NET:-}
if [ -f "$TH_STATE/config" ]; then
    # shellcheck disable=SC1091
    . "$TH_STATE/config"
fi
# default inner net: TH_NET with the third octet + 1 (10.77.0 -> 10.77.1)
inner_net_for() { echo "${1%.*}.$(( ${1##*.} + 1 ))"; }
TH_INNER_NET=${TH_INNER_NET:-$(inner_net_for "$TH_NET")}
[ -n "$TH_INNER_NET_REQUESTED" ] || TH_INNER_NET_REQUESTED=$(inner_net_for "$TH_NET_REQUESTED")

LAB=${TH_PREFIX}-lab              # operator network namespace
BRIDGE=${TH_PREFIX}-br0           # bridge inside $LAB
INNER=${TH_PREFIX}-inner          # netns of the network behind the bastion (TH_BASTION=1)
BRIDGE_IN=${TH_PREFIX}-br1        # bridge inside $INNER (no address)
OPERATOR_IP=${TH_NET}.1
CG_NAME=${TH_PREFIX}-rampart-lab  # parent cgroup for all hosts
T0=$(date +%s.%N)

# ---------------------------------------------------------------- helpers
log() { printf '[rampart-lab +%ss] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%5.1f", a-b}')" "$*" >&2; }
die() { printf '[rampart-lab] ERROR: %s\n' "$*" >&2; exit 1; }

host_name() { echo "${TH_PREFIX}$1"; }
host_ns()   { echo "${TH_PREFIX}-h$1"; }
# With TH_BASTION=1, host 1 is the bastion (on both networks) and hosts 2..N
# are only on the inner network; host_ip is the address ssh connects to.
behind_bastion() { [ "$TH_BASTION" = 1 ] && [ "$1" -gt 1 ]; }
host_ip()   { if behind_bastion "$1"; then host_ip_inner "$1"; else echo "${TH_NET}.$((10 + $1))"; fi; }
host_ip_inner() { echo "${TH_INNER_NET}.$((10 + $1))"; }
host_dir()  { echo "$TH_STATE/hosts/$(host_name "$1")"; }

# Start time (clock ticks since boot, field 22 of /proc/PID/stat) of a PID;
# used together with the PID to make sure we never signal a recycled PID.
proc_start() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }                 # drop "pid (comm) " - comm may contain spaces
    # shellcheck disable=SC2086
    set -- $s
    echo "${20}"
}
# pidfile format: "PID STARTTIME". True if that exact process is still alive.
pidfile_alive() {
    local pid start
    [ -s "$1" ] || return 1
    read -r pid start < "$1" || return 1
    [ -n "$pid" ] && [ "$(proc_start "$pid" 2>/dev/null)" = "$start" ]
}
pidfile_kill() {   # pidfile_kill SIGNAL PIDFILE
    local pid start
    pidfile_alive "$2" || return 0
    read -r pid start < "$2"
    kill "-$1" "$pid" 2>/dev/null || true
}
write_pidfile() { echo "$2 $(proc_start "$2")" > "$1"; }

# cgroup hierarchies the host's processes are placed in.  On this kind of
# machine (no systemd as PID 1) cgroups are "hybrid": v1 controllers, the
# named v1 hierarchy name=systemd, and a controller-less cgroup2 at
# /sys/fs/cgroup/unified.  nspawn (and systemd in the container) need a cgroup
# of their own in both the cgroup2 and the name=systemd hierarchy, otherwise
# several containers would share /payload in the root cgroup.
cg_roots() {
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        echo /sys/fs/cgroup
        return
    fi
    if [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
        echo /sys/fs/cgroup/unified
    fi
    if [ "$(stat -fc %T /sys/fs/cgroup/systemd 2>/dev/null)" = cgroupfs ]; then
        echo /sys/fs/cgroup/systemd
    fi
    # Kubelet mode: each host also gets its own cgroup in every v1 controller
    # hierarchy (memory, cpu, pids, ...), so the kubelet and containerd of one
    # host see their own subtree as the root (nspawn uses a cgroup namespace)
    # and never each other's kubepods.
    if [ "$TH_KUBELET" = 1 ]; then
        local d
        for d in /sys/fs/cgroup/*; do
            { [ -L "$d" ] || [ "$d" = /sys/fs/cgroup/systemd ]; } && continue
            [ "$(stat -fc %T "$d" 2>/dev/null)" = cgroupfs ] && echo "$d"
        done
    fi
    true
}
# mkdir a cgroup; a new cpuset cgroup has no CPUs or memory nodes until given
# its parent's (tasks cannot join it before).
cg_mkdir() {
    mkdir -p "$1"
    if [ -e "$1/cpuset.cpus" ] && [ -z "$(cat "$1/cpuset.cpus")" ]; then
        cat "$(dirname "$1")/cpuset.cpus" > "$1/cpuset.cpus"
        cat "$(dirname "$1")/cpuset.mems" > "$1/cpuset.mems"
    fi
}
# All PIDs in a cgroup subtree.
cg_pids() { [ -d "$1" ] && find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null; true; }

mirror() {
    if [ -n "${TH_MIRROR:-}" ]; then echo "$TH_MIRROR"; return; fi
    # Use the machine's own Debian mirror (deb822 or one-line format).
    local m
    m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$m" ] || die "cannot find a Debian mirror in the apt sources; set TH_MIRROR"
    echo "$m"
}

cache_key() { printf '%s\n' "$TH_SUITE" "$TH_PACKAGES" "$TH_IMAGE_REV" | sha256sum | cut -c1-12; }
# The base rootfs is cached as a zstd squashfs image: `up` loop-mounts it
# read-only as the overlayfs lower layer (~0.1 s, nothing unpacked to disk).
image()     { echo "$TH_CACHE/${TH_SUITE}-base-$(cache_key).sqfs"; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }
need_tools() {
    local t missing=()
    for t in debootstrap mksquashfs unsquashfs systemd-nspawn ip ssh ssh-keygen setsid flock; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (run: $0 deps)"
}
check_config() {   # check_config NET BASTION INNER_NET
    [[ $TH_PREFIX =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "TH_PREFIX must be 1-6 chars [a-z0-9] (interface names are limited to 15 chars)"
    check_net TH_NET "$1"
    [[ $2 =~ ^[01]$ ]] || die "TH_BASTION must be 0 or 1"
    if [ "$2" = 1 ]; then
        check_net TH_INNER_NET "$3"
        [ "$1" != "$3" ] || die "TH_INNER_NET must differ from TH_NET"
    fi
}
check_net() {   # check_net VARNAME NET
    local o ok=1
    [[ $2 =~ ^(10\.[0-9]{1,3}\.[0-9]{1,3}|192\.168\.[0-9]{1,3})$ ]] || ok=0
    for o in ${2//./ }; do [ "$o" -le 255 ] 2>/dev/null || ok=0; done
    [ "$ok" = 1 ] || die "$1 must be a private /24 prefix like 10.77.0 or 192.168.77 (got '$2')"
}

# Journal of created resources: "KIND ARG" lines, undone in reverse by undo_journal.
journal() { echo "$2" >> "$1"; }
undo_journal() {
    local file=$1 kind arg lines i
    [ -f "$file" ] || return 0
    mapfile -t lines < <(tac "$file")
    for i in "${lines[@]}"; do
        read -r kind arg <<< "$i"
        case $kind in
        mount)
            if mountpoint -q "$arg"; then
                umount "$arg" 2>/dev/null || { sleep 1; umount "$arg" 2>/dev/null; } \
                    || umount -l "$arg" || log "warning: could not unmount $arg"
            fi ;;
        netns)
            if [ -e "/run/netns/$arg" ]; then
                ip netns del "$arg" || log "warning: could not delete netns $arg"
            fi ;;
        cgroup)
            # sub-cgroups were made by nspawn / the container's systemd: remove bottom-up
            if [ -d "$arg" ]; then
                find "$arg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
                if [ -d "$arg" ]; then log "warning: cgroup $arg still exists"; fi
            fi ;;
        cgroup-parent)
            if [ -d "$arg" ]; then rmdir "$arg" 2>/dev/null || log "warning: cgroup $arg not empty"; fi ;;
        route-guard)
            if ip route show exact "$arg" type unreachable | grep -q .; then
                ip route del unreachable "$arg" || log "warning: could not delete route $arg"
            fi ;;
        rmtree)
            rm -rf "$arg" ;;
        rmfile)
            rm -f "$arg" ;;
        rmdir)
            # a directory we created: removed only if empty
            if [ -d "$arg" ]; then rmdir "$arg" 2>/dev/null || log "warning: $arg not empty, left in place"; fi ;;
        emptydirs)
            # directories created on our behalf (by nspawn under /run): remove
            # what is left of them if it is only empty directories
            if [ -d "$arg" ]; then find "$arg" -depth -type d -empty -delete 2>/dev/null || true; fi ;;
        sysctl-restore)
            # kernel values changed for the hosts: set back once no lab runs
            # (another lab's hosts would still need them)
            restore_sysctls ;;
        sysctl)
            # (journals of an older testhosts.sh: one value each)
            local key=${arg%% *} old=${arg#* }
            if ! ls /run/netns 2>/dev/null | grep -q -- '-lab$'; then
                sysctl -qw "$key=$old" || log "warning: could not restore $key=$old"
            fi ;;
        netns-mount)
            # `ip netns add` bind-mounted /run/netns onto itself; undo if unused
            if [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
                if mountpoint -q /run/netns; then umount /run/netns || true; fi
                rmdir /run/netns 2>/dev/null || true
            fi ;;
        esac
    done
    rm -f "$file"
}

# ---------------------------------------------------------------- deps
cmd_deps() {
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        debootstrap squashfs-tools systemd-container openssh-client iproute2 util-linux procps >/dev/null
    log "dependencies installed"
}

# ---------------------------------------------------------------- build
cmd_build() {
    need_root; need_tools
    local force=${1:-} img build m
    img=$(image)
    if [ -s "$img" ] && [ "$force" != --force ]; then
        log "base image cached: $img"
        return 0
    fi
    mkdir -p "$TH_CACHE"
    build=$(mktemp -d "$TH_CACHE/.build.XXXXXX")
    # shellcheck disable=SC2064  # expand $build now
    trap "build_cleanup '$build'" EXIT
    m=$(mirror)
    log "debootstrap $TH_SUITE (minbase + $TH_PACKAGES) ..."
    debootstrap --variant=minbase --include="$TH_PACKAGES" "$TH_SUITE" "$build/root" "$m" \
        > "$build/debootstrap.log" 2>&1 || { tail -n 30 "$build/debootstrap.log" >&2; die "debootstrap failed"; }
    log "debootstrap done; customising image"
    customise_image "$build/root"
    log "packing $img ..."
    # (squashfs has no ACLs: the few POSIX ACLs debootstrap set are dropped - harmless)
    mksquashfs "$build/root" "$build/base.sqfs" -comp zstd -Xcompression-level 6 \
        -noappend -quiet -no-progress 2>&1 | grep -v 'Unrecognised xattr prefix system.posix_acl' >&2 || true
    [ -s "$build/base.sqfs" ] || die "mksquashfs failed"
    mv -f "$build/base.sqfs" "$img"
    # drop images of older image revisions / package lists
    find "$TH_CACHE" -maxdepth 1 -name "${TH_SUITE}-base-*.sqfs" ! -path "$img" -delete
    trap - EXIT
    rm -rf "$build"
    log "base image ready: $img ($(du -h "$img" | cut -f1))"
}

# On failure: debootstrap may leave /proc, /sys ... mounted inside the target.
build_cleanup() {
    local m
    awk -v d="$1" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$1"
}

# Turn a fresh debootstrap into a generic "bare server" image.  Anything that
# must differ per host (machine-id, ssh host keys, hostname) is removed here and
# generated per host by `up`.
customise_image() {
    local r=$1 u
    # no network inside the lab, so apt indexes and downloaded .debs are dead weight
    rm -f "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin
    find "$r/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
    : > "$r/etc/machine-id"                     # per host
    rm -f "$r"/etc/ssh/ssh_host_*               # per host
    echo "localhost" > "$r/etc/hostname"
    echo "# rampart lab: no DNS inside the lab" > "$r/etc/resolv.conf"
    cat > "$r/etc/ssh/sshd_config.d/50-rampart-lab.conf" <<'EOF'
# rampart lab: key-only logins (root and deploy)
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
    # Hosts start "bare": etcd is installed but not enabled (the tool under
    # test configures and enables it).  Periodic maintenance jobs that only
    # make noise in a container are disabled.  (systemctl works offline in a chroot.)
    for u in etcd.service containerd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
             e2scrub_reap.service fstrim.timer; do
        chroot "$r" systemctl disable "$u" >/dev/null 2>&1 || true
    done
    # nspawn mounts /proc/sys read-only.  Each host has its own network
    # namespace, so make /proc/sys/net writable early in boot: `sysctl -w
    # net.ipv4.ip_forward=1` and /etc/sysctl.d/*.conf net.* keys then work like
    # on a real server (kernel.*/vm.* stay read-only, as in any container).
    cat > "$r/etc/systemd/system/rampart-lab-procsysnet.service" <<'EOF'
[Unit]
Description=rampart lab: writable /proc/sys/net (host has its own netns)
DefaultDependencies=no
Before=sysinit.target systemd-sysctl.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net'

[Install]
WantedBy=sysinit.target
EOF
    chroot "$r" systemctl enable rampart-lab-procsysnet.service >/dev/null 2>&1
    mkdir -p "$r/root/.ssh"; chmod 700 "$r/root/.ssh"
    # Non-root user for `become: sudo`: no password ('*' = no password, not
    # "locked", so sshd accepts its key), passwordless sudo for everything.
    chroot "$r" useradd --create-home --shell /bin/bash --user-group "$DEPLOY_USER"
    chroot "$r" usermod -p '*' "$DEPLOY_USER"
    install -d -m 700 -o "$(stat -c %u "$r/home/$DEPLOY_USER")" -g "$(stat -c %g "$r/home/$DEPLOY_USER")" \
        "$r/home/$DEPLOY_USER/.ssh"
    printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$DEPLOY_USER" > "$r/etc/sudoers.d/$DEPLOY_USER"
    chmod 0440 "$r/etc/sudoers.d/$DEPLOY_USER"
    chroot "$r" visudo -cq -f "/etc/sudoers.d/$DEPLOY_USER" || die "invalid sudoers file for $DEPLOY_USER"
}

# Make $TH_STATE/base (the read-only lower layer of every host) available.
ensure_base() {
    local img j=$TH_STATE/created
    img=$(image)
    [ -s "$img" ] || cmd_build
    mountpoint -q "$TH_STATE/base" && return 0
    mkdir -p "$TH_STATE/base"
    journal "$j" "mount $TH_STATE/base"
    # loop mount; `umount` releases the loop device again (autoclear)
    if ! mount -t squashfs -o loop,ro "$img" "$TH_STATE/base" 2>/dev/null; then
        # no loop devices (e.g. inside some containers): unpack instead (~5-10 s)
        log "cannot loop-mount $img; unpacking it to $TH_STATE/base"
        unsquashfs -quiet -no-progress -force -dest "$TH_STATE/base" "$img" >/dev/null
    fi
}

# ---------------------------------------------------------------- kernel values
# Kernel values a lab changes are the machine's, shared by every lab running
# on it. The first lab to change a key records its original value in
# SYSCTL_ORIG; every lab journals "sysctl-restore", and the last lab to go
# down puts every recorded value back (whichever lab changed it).
SYSCTL_ORIG=/var/tmp/rampart-lab-sysctl.orig
# set_sysctl KEY VALUE min|exact: raise KEY to at least VALUE, or set it to VALUE.
set_sysctl() {
    local key=$1 want=$2 mode=$3 cur
    cur=$(sysctl -n "$key")
    case $mode in
        min) [ "$cur" -lt "$want" ] || return 0 ;;
        *) [ "$cur" != "$want" ] || return 0 ;;
    esac
    (
        flock 8
        grep -q "^$key " "$SYSCTL_ORIG" 2>/dev/null || echo "$key $cur" >> "$SYSCTL_ORIG"
    ) 8> "$SYSCTL_ORIG.lock"
    sysctl -qw "$key=$want"
}
# Puts back what SYSCTL_ORIG recorded, once no lab runs any more.
restore_sysctls() {
    if ls /run/netns 2>/dev/null | grep -q -- '-lab$'; then return 0; fi
    (
        flock 8
        local key old
        if [ -f "$SYSCTL_ORIG" ]; then
            while read -r key old; do
                sysctl -qw "$key=$old" || log "warning: could not restore $key=$old"
            done < "$SYSCTL_ORIG"
            rm -f "$SYSCTL_ORIG"
        fi
    ) 8> "$SYSCTL_ORIG.lock"
    rm -f "$SYSCTL_ORIG.lock"
}

# ---------------------------------------------------------------- lab network
lab_up() {
    local j=$TH_STATE/created
    # Every host's systemd, journald, logind and user manager hold inotify
    # instances, all counted against root: Debian's default of 128 runs out
    # at about 16 hosts (user@0.service fails, boots stall). Raise it while
    # labs run; undone by `down`.
    journal "$j" "sysctl-restore"
    set_sysctl fs.inotify.max_user_instances 4096 min
    set_sysctl fs.inotify.max_user_watches 1048576 min
    # TH_NET must not overlap anything routed on this machine
    if [ -n "$(ip route show match "$TH_NET.1")" ] && ip route show match "$TH_NET.1" | grep -qv '^default'; then
        die "TH_NET $TH_NET.0/24 overlaps a route of this machine: $(ip route show match "$TH_NET.1" | grep -v '^default' | head -n1) - pick another TH_NET"
    fi
    if [ "$TH_BASTION" = 1 ] && [ -n "$(ip route show match "$TH_INNER_NET.1" | grep -v '^default' || true)" ]; then
        die "TH_INNER_NET $TH_INNER_NET.0/24 overlaps a route of this machine: $(ip route show match "$TH_INNER_NET.1" | grep -v '^default' | head -n1) - pick another TH_INNER_NET"
    fi
    # refuse to adopt (and later delete) a namespace that is not in our journal
    [ ! -e "/run/netns/$LAB" ] || die "netns $LAB exists but is not recorded in $TH_STATE (leftover or someone else's): 'ip netns del $LAB' or use another TH_PREFIX"
    [ "$TH_BASTION" != 1 ] || [ ! -e "/run/netns/$INNER" ] || die "netns $INNER exists but is not recorded in $TH_STATE: 'ip netns del $INNER' or use another TH_PREFIX"
    mountpoint -q /run/netns 2>/dev/null || journal "$j" "netns-mount /run/netns"
    journal "$j" "netns $LAB"
    ip netns add "$LAB"
    ip -n "$LAB" link set lo up
    # No IPv6 on lab links (link-local chatter stays off; ::1 on lo still works).
    ip netns exec "$LAB" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$LAB" link add "$BRIDGE" type bridge
    ip -n "$LAB" addr add "$OPERATOR_IP/24" dev "$BRIDGE"
    ip -n "$LAB" link set "$BRIDGE" up
    # Safety net in the machine's own namespace (the only change made there):
    # a process accidentally run outside the lab that connects to a lab IP
    # would otherwise send its packets out of the default route.  With an
    # 'unreachable' route such a connect fails locally (EHOSTUNREACH).
    journal "$j" "route-guard $TH_NET.0/24"
    ip route add unreachable "$TH_NET.0/24"
    if [ "$TH_BASTION" = 1 ]; then
        # The network behind the bastion: a bridge in a namespace of its own,
        # with no address and no link to $LAB.  Only the bastion has a leg here.
        journal "$j" "netns $INNER"
        ip netns add "$INNER"
        ip -n "$INNER" link set lo up
        ip netns exec "$INNER" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
        ip -n "$INNER" link add "$BRIDGE_IN" type bridge
        ip -n "$INNER" link set "$BRIDGE_IN" up
        journal "$j" "route-guard $TH_INNER_NET.0/24"
        ip route add unreachable "$TH_INNER_NET.0/24"
    fi
    # nspawn creates /run/systemd/nspawn/{locks,propagate}; remove them later if
    # they are ours and empty.
    [ -d /run/systemd/nspawn ] || journal "$j" "emptydirs /run/systemd/nspawn"
    # parent cgroups
    local root
    for root in $(cg_roots); do
        [ -d "$root/$CG_NAME" ] || { journal "$j" "cgroup-parent $root/$CG_NAME"; cg_mkdir "$root/$CG_NAME"; }
    done
    if [ "$TH_KUBELET" = 1 ]; then
        # The kubelet (protectKernelDefaults) refuses to start unless these
        # kernel values are in effect, and a host cannot set them: they are
        # the machine's, shared by every host. Set while labs run, like the
        # inotify limits above, and put back by `down`.
        local kv
        for kv in vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1 \
                  kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000; do
            set_sysctl "${kv%%=*}" "${kv#*=}" exact
        done
    fi
}

# ---------------------------------------------------------------- hosts
# Prepare host I (filesystem, keys, network, cgroups) and start it in the background.
host_start() {
    local i=$1 n name ns ip h j root k f
    n=$2; name=$(host_name "$i"); ns=$(host_ns "$i"); ip=$(host_ip "$i"); h=$(host_dir "$i")
    j=$h/created
    [ ! -e "/run/netns/$ns" ] || die "netns $ns exists but is not ours: 'ip netns del $ns' or use another TH_PREFIX"
    for k in $(cg_roots); do
        [ ! -d "$k/$CG_NAME/$name" ] || die "cgroup $k/$CG_NAME/$name exists but is not ours"
    done
    mkdir -p "$h/upper" "$h/work" "$h/root"

    # 1. private filesystem: overlayfs, base image read-only below, per-host upper
    journal "$j" "mount $h/root"
    mount -t overlay "overlay-$name" \
        -o "lowerdir=$TH_STATE/base,upperdir=$h/upper,workdir=$h/work" "$h/root"
    root=$h/root
    # nspawn keeps runtime files for this machine under /run/systemd/nspawn and
    # deletes them on a clean exit, not when it is SIGKILLed: record them too.
    journal "$j" "rmtree /run/systemd/nspawn/propagate/$name"
    journal "$j" "rmtree /run/systemd/nspawn/locks/inode-$(stat -c '%d:%i' "$root")"
    echo "$name" > "$root/etc/hostname"
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$root/etc/machine-id"; echo >> "$root/etc/machine-id"
    {
        printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'
        if [ "$TH_BASTION" = 1 ]; then
            # with a bastion the hosts talk to each other on the inner network
            [ "$i" != 1 ] || printf '%s\t%s\n' "$OPERATOR_IP" "${TH_PREFIX}-operator"
            for k in $(seq 1 "$n"); do printf '%s\t%s\n' "$(host_ip_inner "$k")" "$(host_name "$k")"; done
        else
            printf '%s\t%s\n' "$OPERATOR_IP" "${TH_PREFIX}-operator"
            for k in $(seq 1 "$n"); do printf '%s\t%s\n' "$(host_ip "$k")" "$(host_name "$k")"; done
        fi
    } > "$root/etc/hosts"
    # unique ssh host keys, and tell sshd exactly which ones exist
    for k in $TH_HOSTKEY_TYPES; do
        ssh-keygen -q -t "$k" -N '' -C "root@$name" -f "$root/etc/ssh/ssh_host_${k}_key"
        echo "HostKey /etc/ssh/ssh_host_${k}_key"
    done > "$root/etc/ssh/sshd_config.d/40-rampart-lab-hostkeys.conf"
    # the lab key (and TH_AUTHORIZED_KEYS) for root and for the sudo user
    for f in "$root/root" "$root/home/$DEPLOY_USER"; do
        cat "$TH_CLIENT_DIR/id_ed25519.pub" > "$f/.ssh/authorized_keys"
        if [ -n "$TH_AUTHORIZED_KEYS" ]; then cat "$TH_AUTHORIZED_KEYS" >> "$f/.ssh/authorized_keys"; fi
        chmod 600 "$f/.ssh/authorized_keys"
        chown "$(stat -c %u:%g "$f/.ssh")" "$f/.ssh/authorized_keys"
    done
    local names="$name,$ip"
    if [ "$TH_BASTION" = 1 ] && [ "$i" = 1 ]; then names+=",$(host_ip_inner 1)"; fi
    for f in "$root"/etc/ssh/ssh_host_*_key.pub; do
        printf '%s %s\n' "$names" "$(cut -d' ' -f1,2 "$f")"
    done > "$h/known_hosts"

    # 2. network: own netns, veth "eth0" <-> "<p>-h<I>" on the lab bridge
    journal "$j" "netns $ns"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    if behind_bastion "$i"; then
        # only on the inner network
        ip link add "$ns" netns "$INNER" type veth peer name eth0 netns "$ns"
        ip -n "$INNER" link set "$ns" master "$BRIDGE_IN" up
    else
        ip link add "$ns" netns "$LAB" type veth peer name eth0 netns "$ns"
        ip -n "$LAB" link set "$ns" master "$BRIDGE" up
    fi
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    if [ "$TH_BASTION" = 1 ] && [ "$i" = 1 ]; then
        # the bastion's second leg, eth1, on the inner network (no forwarding)
        ip link add "${ns}i" netns "$INNER" type veth peer name eth1 netns "$ns"
        ip -n "$INNER" link set "${ns}i" master "$BRIDGE_IN" up
        ip -n "$ns" addr add "$(host_ip_inner 1)/24" dev eth1
        ip -n "$ns" link set eth1 up
    fi

    # 3. cgroups (nspawn + all container processes will live below these)
    for k in $(cg_roots); do
        journal "$j" "cgroup $k/$CG_NAME/$name"
        cg_mkdir "$k/$CG_NAME/$name"
    done
    if [ "$TH_KUBELET" = 1 ]; then kubelet_mode "$root" "$h"; fi

    # 4. boot: a small supervisor (this script, `_run`) runs nspawn and restarts
    #    it when the container reboots.  setsid + no inherited fds: it survives
    #    the calling shell and never holds a CI pipe open.
    : > "$h/console.log"
    setsid "$SELF" _run "$i" < /dev/null >> "$h/console.log" 2>&1 9>&- &
    write_pidfile "$h/supervisor.pid" $!
}

# Kubelet mode, per host: what a kubelet, containerd and runc need that a
# plain nspawn host lacks.
kubelet_mode() {
    local root=$1 h=$2
    # containerd's overlay snapshots cannot live on the host's own overlayfs
    # root (overlayfs refuses an overlayfs upper dir): give it a directory on
    # the machine's filesystem (removed with the host's state dir).
    mkdir -p "$h/containerd"
    # nspawn mounts the v1 controller hierarchies read-only (writable only
    # with user namespaces). The host's own cgroup is the root of what it
    # sees (cgroup namespace), so making them writable lets its systemd and
    # kubelet manage their subtree and nothing above it.
    cat > "$root/etc/systemd/system/rampart-lab-cgroups.service" <<'EOF'
[Unit]
Description=rampart lab (kubelet mode): writable cgroup controllers
DefaultDependencies=no
Before=sysinit.target
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*; do [ -L "$d" ] || mount -o remount,bind,rw "$d"; done'

[Install]
WantedBy=sysinit.target
EOF
    ln -sf ../rampart-lab-cgroups.service "$root/etc/systemd/system/sysinit.target.wants/rampart-lab-cgroups.service"
}
# Extra nspawn options for host dir H (one word each).
nspawn_extra() {
    [ "$TH_KUBELET" = 1 ] || return 0
    # /dev/kmsg: the kubelet's OOM watcher reads it (CAP_SYSLOG to be allowed
    # to); CAP_SYS_RESOURCE: the kubelet, containerd and runc set OOM scores
    # below 0 (granted only where this machine has it; where it does not,
    # inventories set runtime.restrictOomScoreAdj); @keyring: runc gives every
    # container a session keyring, which nspawn's default system call filter
    # refuses.
    echo "--bind=$1/containerd:/var/lib/containerd --bind-ro=/dev/kmsg --capability=CAP_SYSLOG,CAP_SYS_RESOURCE --system-call-filter=@keyring"
}

# Hidden subcommand: supervisor loop for host I (runs in the background).
cmd__run() {
    set +e
    local i=$1 name ns h child="" rc stopping=0 k
    name=$(host_name "$i"); ns=$(host_ns "$i"); h=$(host_dir "$i")
    write_pidfile "$h/supervisor.pid" "$$"    # (also written by `up`; closes a race)
    trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT HUP
    while [ "$stopping" = 0 ] && [ ! -e "$h/stopping" ]; do
        # CAP_NET_ADMIN: root in the host may manage its own netns (routes,
        # net.* sysctls such as net.ipv4.ip_forward) as on a real server; the
        # netns only has the veth into the lab, so nothing can leave anyway.
        (
            # enter the host's cgroups, then become nspawn
            for k in $(cg_roots); do echo "$BASHPID" > "$k/$CG_NAME/$name/cgroup.procs"; done
            # shellcheck disable=SC2046  # nspawn_extra: one word per option
            exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb \
                systemd-nspawn --boot \
                    --directory="$h/root" --machine="$name" \
                    --settings=no --register=no --keep-unit \
                    --network-namespace-path="/run/netns/$ns" \
                    --resolv-conf=off --timezone=off --link-journal=no \
                    --capability=CAP_NET_ADMIN \
                    $(nspawn_extra "$h") \
                    --console=read-only
        ) &
        child=$!
        write_pidfile "$h/nspawn.pid" "$child"
        wait "$child"; rc=$?
        while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done   # wait was interrupted by a signal
        child=""
        # nspawn exits 133 when the container asked for a reboot
        if [ "$rc" = 133 ] && [ "$stopping" = 0 ] && [ ! -e "$h/stopping" ]; then
            echo "[rampart-lab] $name rebooting"
            continue
        fi
        echo "[rampart-lab] $name stopped (nspawn exit $rc)"
        break
    done
    rm -f "$h/nspawn.pid"
}

ssh_opts() { echo "-F $TH_STATE/ssh_config"; }

# Wait for host I: sshd answers, then systemd finished booting.
host_wait() {
    local i=$1 name deadline state
    name=$(host_name "$i")
    deadline=$(( $(date +%s) + TH_BOOT_TIMEOUT ))
    # shellcheck disable=SC2046
    until ip netns exec "$LAB" ssh $(ssh_opts) -o ConnectTimeout=1 "$name" true 2>/dev/null; do
        pidfile_alive "$(host_dir "$i")/supervisor.pid" || { tail -n 30 "$(host_dir "$i")/console.log" >&2; die "$name died while booting"; }
        [ "$(date +%s)" -lt "$deadline" ] || { tail -n 30 "$(host_dir "$i")/console.log" >&2; die "$name: no ssh after ${TH_BOOT_TIMEOUT}s"; }
        sleep 0.2
    done
    # shellcheck disable=SC2046
    state=$(timeout "$TH_BOOT_TIMEOUT" ip netns exec "$LAB" ssh $(ssh_opts) "$name" systemctl is-system-running --wait 2>&1 || true)
    if [ "$state" != running ]; then
        log "warning: $name is '$state'; failed units:"
        # shellcheck disable=SC2046
        ip netns exec "$LAB" ssh $(ssh_opts) "$name" systemctl --failed --no-legend >&2 || true
    fi
    log "$name ($(host_ip "$i")) is $state"
}

# Stop host I and undo everything created for it.  Phase "signal" only asks
# nspawn to shut the container down (so all hosts stop in parallel).
host_stop() {
    local i=$1 phase=$2 h name k t pids
    h=$(host_dir "$i"); name=$(host_name "$i")
    [ -d "$h" ] || return 0
    if [ "$phase" = signal ]; then
        touch "$h/stopping"
        # SIGTERM to nspawn = orderly shutdown of the container (SIGRTMIN+3 to
        # its PID 1); no nspawn yet: the supervisor forwards TERM / won't start it
        if pidfile_alive "$h/nspawn.pid"; then
            pidfile_kill TERM "$h/nspawn.pid"
        else
            pidfile_kill TERM "$h/supervisor.pid"
        fi
        return 0
    fi
    # wait up to 20 s for an orderly shutdown.  nspawn passes SIGTERM on to
    # the container's systemd as SIGRTMIN+3; one that arrives before systemd
    # has set up its handlers (a host still booting, e.g. `down` after an
    # interrupted `up`) is lost, so repeat it every second (same checked PID).
    for t in $(seq 1 100); do
        pidfile_alive "$h/supervisor.pid" || pidfile_alive "$h/nspawn.pid" || break
        if [ $((t % 5)) = 0 ]; then pidfile_kill TERM "$h/nspawn.pid"; fi
        sleep 0.2
    done
    # Whatever is still alive in this host's cgroups (e.g. the container's
    # systemd after nspawn itself was SIGKILLed) is killed: cgroup.kill where
    # available, else each PID listed in the cgroup.
    pids=""
    for k in $(cg_roots); do pids+=$(cg_pids "$k/$CG_NAME/$name"); done
    if [ -n "$pids" ]; then
        log "$name: killing leftover processes"
        for k in $(cg_roots); do
            if [ -e "$k/$CG_NAME/$name/cgroup.kill" ]; then
                echo 1 > "$k/$CG_NAME/$name/cgroup.kill"
            else
                for pid in $(cg_pids "$k/$CG_NAME/$name"); do kill -KILL "$pid" 2>/dev/null || true; done
            fi
        done
    fi
    pidfile_kill KILL "$h/supervisor.pid"
    for t in $(seq 1 50); do
        pids=""
        for k in $(cg_roots); do pids+=$(cg_pids "$k/$CG_NAME/$name"); done
        [ -z "$pids" ] && ! pidfile_alive "$h/supervisor.pid" && break
        sleep 0.1
    done
    undo_journal "$h/created"
    rm -rf "$h"
    log "$name removed"
}

hosts_present() { [ -d "$TH_STATE/hosts" ] && find "$TH_STATE/hosts" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sed "s/^$TH_PREFIX//" | sort -n; true; }

write_client_files() {
    local n=$1 i bastion_json="null"
    {
        for i in $(seq 1 "$n"); do
            printf 'Host %s %s\n  HostName %s\n' "$(host_name "$i")" "$(host_ip "$i")" "$(host_ip "$i")"
            # (ssh passes -F on to the jump connection, so it uses this file too)
            if behind_bastion "$i"; then printf '  ProxyJump %s\n' "$(host_name 1)"; fi
        done
        cat <<EOF
Host *
  User root
  IdentityFile $TH_CLIENT_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $TH_CLIENT_DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 5
EOF
    } > "$TH_STATE/ssh_config"
    # (journaled in client_dir_up)
    cat "$TH_STATE"/hosts/*/known_hosts > "$TH_CLIENT_DIR/known_hosts"
    chmod 644 "$TH_CLIENT_DIR/known_hosts"
    {
        echo "TH_LAB_NETNS=$LAB"
        echo "TH_OPERATOR_IP=$OPERATOR_IP"
        echo "TH_SSH_KEY=$TH_CLIENT_DIR/id_ed25519"
        echo "TH_SSH_CONFIG=$TH_STATE/ssh_config"
        echo "TH_KNOWN_HOSTS=$TH_CLIENT_DIR/known_hosts"
        echo "TH_SUDO_USER=$DEPLOY_USER"
        echo "TH_BASTION=$TH_BASTION"
        echo "TH_KUBELET=$TH_KUBELET"
        if [ "$TH_BASTION" = 1 ]; then
            echo "TH_BASTION_HOST=$(host_name 1)"
            echo "TH_BASTION_IP=$(host_ip 1)"
            echo "TH_INNER_NET=$TH_INNER_NET"
        fi
        echo "TH_N=$n"
        echo "TH_HOSTS='$(for i in $(seq 1 "$n"); do printf '%s ' "$(host_name "$i")"; done | sed 's/ $//')'"
        echo "TH_IPS='$(for i in $(seq 1 "$n"); do printf '%s ' "$(host_ip "$i")"; done | sed 's/ $//')'"
        for i in $(seq 1 "$n"); do
            echo "TH_HOST_$i=$(host_name "$i")"
            echo "TH_IP_$i=$(host_ip "$i")"
            echo "TH_ROOT_$i=$(host_dir "$i")/root"        # host's filesystem, seen from outside
            echo "TH_CHANGES_$i=$(host_dir "$i")/upper"    # only what changed vs. the base image
        done
    } > "$TH_STATE/hosts.env"
    # the same for programs (e.g. a Rust test reading it with serde_json)
    if [ "$TH_BASTION" = 1 ]; then
        bastion_json=$(printf '{"name":"%s","address":"%s","inner_address":"%s","port":22,"user":"root"}' \
            "$(host_name 1)" "$(host_ip 1)" "$(host_ip_inner 1)")
    fi
    # net: the operator's /24; cluster_net / cluster_ip: the network and
    # address the hosts talk to each other on (the inner network with a
    # bastion, so host 1's cluster_ip is its inner address; else = net / ip).
    local cluster_net=$TH_NET
    [ "$TH_BASTION" != 1 ] || cluster_net=$TH_INNER_NET
    {
        printf '{"lab_netns":"%s","operator_ip":"%s","net":"%s.0/24","cluster_net":"%s.0/24","ssh_key":"%s","ssh_config":"%s","known_hosts":"%s","sudo_user":"%s","kubelet":%s,"bastion":%s,"hosts":[' \
            "$LAB" "$OPERATOR_IP" "$TH_NET" "$cluster_net" "$TH_CLIENT_DIR/id_ed25519" "$TH_STATE/ssh_config" \
            "$TH_CLIENT_DIR/known_hosts" "$DEPLOY_USER" "$([ "$TH_KUBELET" = 1 ] && echo true || echo false)" "$bastion_json"
        for i in $(seq 1 "$n"); do
            [ "$i" = 1 ] || printf ','
            printf '{"name":"%s","ip":"%s","cluster_ip":"%s","user":"root","port":22,"behind_bastion":%s,"root":"%s","changes":"%s"}' \
                "$(host_name "$i")" "$(host_ip "$i")" \
                "$(if [ "$TH_BASTION" = 1 ]; then host_ip_inner "$i"; else host_ip "$i"; fi)" \
                "$(behind_bastion "$i" && echo true || echo false)" \
                "$(host_dir "$i")/root" "$(host_dir "$i")/upper"
        done
        printf ']}\n'
    } > "$TH_STATE/hosts.json"
}

# The client side of the lab in a fixed place (inventories/lab.yaml names it):
# $TH_CLIENT_DIR/id_ed25519 (+ .pub) and known_hosts.  Everything created here
# is journaled, so `down` removes the files and the directories it made.
client_dir_up() {
    local j=$TH_STATE/created d f dirs=()
    for f in id_ed25519 id_ed25519.pub known_hosts; do
        [ ! -e "$TH_CLIENT_DIR/$f" ] || die "$TH_CLIENT_DIR/$f exists but is not recorded in $TH_STATE (left over, or another lab's): remove it or set TH_CLIENT_DIR"
    done
    d=$TH_CLIENT_DIR
    while [ ! -d "$d" ]; do dirs=("$d" "${dirs[@]}"); d=$(dirname "$d"); done
    for d in "${dirs[@]}"; do journal "$j" "rmdir $d"; mkdir -m 755 "$d"; done
    chmod 700 "$TH_CLIENT_DIR"
    for f in id_ed25519 id_ed25519.pub known_hosts; do journal "$j" "rmfile $TH_CLIENT_DIR/$f"; done
    ssh-keygen -q -t ed25519 -N '' -C "rampart-lab" -f "$TH_CLIENT_DIR/id_ed25519" <<< y > /dev/null
    chmod 600 "$TH_CLIENT_DIR/id_ed25519"
}

# True if exactly hosts 1..N exist and all of them are running.
healthy() {
    local n=$1 i
    [ -f "$TH_STATE/hosts.env" ] || return 1
    [ "$(hosts_present | tr '\n' ' ')" = "$(seq 1 "$n" | tr '\n' ' ')" ] || return 1
    for i in $(seq 1 "$n"); do
        pidfile_alive "$(host_dir "$i")/nspawn.pid" || return 1
        # shellcheck disable=SC2046
        ip netns exec "$LAB" ssh $(ssh_opts) -o ConnectTimeout=2 "$(host_name "$i")" true 2>/dev/null || return 1
    done
}

cmd_up() {
    need_root; need_tools; check_config "$TH_NET_REQUESTED" "$TH_BASTION_REQUESTED" "$TH_INNER_NET_REQUESTED"
    local n=${1:-}
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "usage: $0 up N   (1 <= N <= 200)"
    [ "$TH_BASTION_REQUESTED" != 1 ] || [ "$n" -ge 2 ] || die "TH_BASTION=1 needs N >= 2 (host 1 is the bastion)"
    exec 9> "$TH_STATE.lock"; flock 9
    if [ -d "$TH_STATE" ]; then
        if [ "$TH_NET" = "$TH_NET_REQUESTED" ] && [ "$TH_BASTION" = "$TH_BASTION_REQUESTED" ] \
            && [ "$TH_KUBELET" = "$TH_KUBELET_REQUESTED" ] \
            && { [ "$TH_BASTION" = 0 ] || [ "$TH_INNER_NET" = "$TH_INNER_NET_REQUESTED" ]; } && healthy "$n"; then
            log "$n host(s) already up"; cat "$TH_STATE/hosts.env"; return 0
        fi
        log "existing state does not match 'up $n': tearing it down first"
        do_down
    fi
    TH_NET=$TH_NET_REQUESTED; OPERATOR_IP=${TH_NET}.1
    TH_BASTION=$TH_BASTION_REQUESTED; TH_INNER_NET=$TH_INNER_NET_REQUESTED
    mkdir -p "$TH_STATE/hosts"
    TH_KUBELET=$TH_KUBELET_REQUESTED
    printf 'TH_NET=%q\nTH_SUITE=%q\nTH_BASTION=%q\nTH_INNER_NET=%q\nTH_CLIENT_DIR=%q\nTH_KUBELET=%q\n' \
        "$TH_NET" "$TH_SUITE" "$TH_BASTION" "$TH_INNER_NET" "$TH_CLIENT_DIR" "$TH_KUBELET" > "$TH_STATE/config"
    ensure_base
    lab_up
    client_dir_up
    log "starting $n host(s)"
    local i
    for i in $(seq 1 "$n"); do host_start "$i" "$n"; done
    write_client_files "$n"
    # wait for all hosts in parallel
    local pids=() rc=0 p
    for i in $(seq 1 "$n"); do host_wait "$i" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ "$rc" = 0 ] || die "not all hosts came up (see $TH_STATE/hosts/*/console.log); run '$0 down' to clean up"
    log "all $n host(s) up"
    cat "$TH_STATE/hosts.env"
}

do_down() {
    local i
    if [ -d "$TH_STATE" ]; then
        log "stopping host(s): $(hosts_present | tr '\n' ' ')"
        for i in $(hosts_present); do host_stop "$i" signal; done
        for i in $(hosts_present); do host_stop "$i" wait; done
        undo_journal "$TH_STATE/created"
        rm -rf "$TH_STATE"
    fi
}

cmd_down() {
    need_root
    exec 9> "$TH_STATE.lock"; flock 9
    do_down
    rm -f "$TH_STATE.lock"
    log "down: all test hosts removed"
}

cmd_ssh() {
    local i=${1:-}
    [[ $i =~ ^[0-9]+$ ]] || die "usage: $0 ssh I [CMD...]"
    shift
    [ -d "$(host_dir "$i")" ] || die "no host $i (run: $0 up N)"
    # shellcheck disable=SC2046
    exec ip netns exec "$LAB" ssh $(ssh_opts) "$(host_name "$i")" "$@"
}

cmd_exec() {
    [ $# -gt 0 ] || die "usage: $0 exec CMD..."
    [ -e "/run/netns/$LAB" ] || die "lab is not up (run: $0 up N)"
    exec ip netns exec "$LAB" "$@"
}

cmd_env() { [ -f "$TH_STATE/hosts.env" ] || die "not up"; cat "$TH_STATE/hosts.env"; }

cmd_status() {
    local i h name k pid kb total procs state
    [ -d "$TH_STATE/hosts" ] || { echo "down"; return 0; }
    printf '%-6s %-12s %-8s %6s %10s  %s\n' HOST IP NSPAWN PROCS PSS_MiB SYSTEM
    for i in $(hosts_present); do
        h=$(host_dir "$i"); name=$(host_name "$i")
        total=0; procs=0
        k=$(cg_roots | sed -n 1p)      # (not head: SIGPIPE + pipefail)
        for pid in $(cg_pids "$k/$CG_NAME/$name"); do
            kb=$(awk '/^Pss:/{print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
            total=$((total + ${kb:-0})); procs=$((procs + 1))
        done
        # shellcheck disable=SC2046
        state=$(ip netns exec "$LAB" ssh $(ssh_opts) -o ConnectTimeout=2 "$name" systemctl is-system-running 2>/dev/null || true)
        printf '%-6s %-12s %-8s %6s %10s  %s\n' "$name" "$(host_ip "$i")" \
            "$(pidfile_alive "$h/nspawn.pid" && echo running || echo stopped)" "$procs" \
            "$(awk -v t="$total" 'BEGIN{printf "%.1f", t/1024}')" "${state:-unreachable}"
    done
}

main() {
    case ${1:-} in
        deps)   shift; cmd_deps "$@" ;;
        build)  shift; cmd_build "$@" ;;
        up)     shift; cmd_up "$@" ;;
        down)   shift; cmd_down "$@" ;;
        ssh)    shift; cmd_ssh "$@" ;;
        exec)   shift; cmd_exec "$@" ;;
        env)    shift; cmd_env "$@" ;;
        status) shift; cmd_status "$@" ;;
        _run)   shift; cmd__run "$@" ;;
        *) sed -n '/^# Usage/,/^# Cleanup/p' "$SELF" | sed 's/^# \{0,1\}//;$d' >&2; exit 2 ;;
    esac
}

# Everything is parsed before anything runs (one line): the long-running
# background supervisors (`_run`) never read this file again, so editing or
# checking out a new version while hosts are up is safe.
main "$@"; exit $?
