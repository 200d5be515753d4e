#!/usr/bin/env bash
# tests/lab/check-etcd-tls.sh - end-to-end smoke test on the rampart lab (testhosts.sh):
# does, over real SSH, what a provisioning tool would do for an etcd control plane.
#
#   1. makes a CA + per-host server/peer certs (IP SAN = host IP) and a client
#      cert with openssl, on the operator side;
#   2. copies them over scp into /etc/kubernetes/pki/etcd/ on each host, writes
#      /etc/default/etcd (TLS everywhere, client-cert-auth=true), then
#      `systemctl daemon-reload && systemctl enable --now etcd.service`;
#   3. checks health from the operator namespace with curl + client cert, and
#      that a client without a cert is rejected;
#   4. `ETCDCTL_API=3 etcdctl --cacert --cert --key snapshot save` inside host 1
#      and `etcdctl snapshot status` on the file;
#   5. installs a systemd timer and checks it fires.
#
# Usage: check-etcd-tls.sh [MEMBERS]   (default 1: a single-member etcd on host 1;
#        MEMBERS=3 makes a 3-member cluster over hosts 1..3)
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
TH=$HERE/testhosts.sh
M=${1:-1}
# shellcheck disable=SC1090
source <("$TH" env)
[ "$TH_N" -ge "$M" ] || { echo "need $M hosts, have $TH_N" >&2; exit 1; }

PKI=$(mktemp -d); trap 'rm -rf "$PKI"' EXIT
cd "$PKI"
o() { openssl "$@" 2>/dev/null; }
o req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout ca.key -out ca.crt -subj "/CN=etcd-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
cert() { # cert FILE CN SAN EKU
    local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$4"
    [ -n "$3" ] && ext+="
subjectAltName=$3"
    o req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
    o x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$1.crt" -extfile <(echo "$ext")
    rm -f "$1.csr"
}
cert client etcd-client "" clientAuth

ssh_() { ip netns exec "$TH_LAB_NETNS" ssh -F "$TH_SSH_CONFIG" "$@"; }
scp_() { ip netns exec "$TH_LAB_NETNS" scp -q -F "$TH_SSH_CONFIG" "$@"; }

cluster=""
for i in $(seq 1 "$M"); do
    h=TH_HOST_$i; ip=TH_IP_$i
    cluster+="${cluster:+,}${!h}=https://${!ip}:2380"
done

for i in $(seq 1 "$M"); do
    h=TH_HOST_$i; ip=TH_IP_$i; h=${!h}; ip=${!ip}
    cert "server-$h" "$h" "DNS:$h,DNS:localhost,IP:$ip,IP:127.0.0.1" serverAuth,clientAuth
    cert "peer-$h"   "$h" "DNS:$h,IP:$ip" serverAuth,clientAuth
    ssh_ "$h" 'mkdir -p /etc/kubernetes/pki/etcd'
    scp_ ca.crt client.crt client.key "server-$h.crt" "server-$h.key" "peer-$h.crt" "peer-$h.key" \
        "$h:/etc/kubernetes/pki/etcd/"
    ssh_ "$h" "cd /etc/kubernetes/pki/etcd && for f in server peer; do mv \$f-$h.crt \$f.crt; mv \$f-$h.key \$f.key; done
chgrp etcd *.key && chmod 640 *.key
cat > /etc/default/etcd <<EOF
ETCD_NAME=$h
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=https://$ip:2379,https://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=https://$ip:2379
ETCD_LISTEN_PEER_URLS=https://$ip:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://$ip:2380
ETCD_INITIAL_CLUSTER=$cluster
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=rampart-lab
ETCD_CERT_FILE=/etc/kubernetes/pki/etcd/server.crt
ETCD_KEY_FILE=/etc/kubernetes/pki/etcd/server.key
ETCD_TRUSTED_CA_FILE=/etc/kubernetes/pki/etcd/ca.crt
ETCD_CLIENT_CERT_AUTH=true
ETCD_PEER_CERT_FILE=/etc/kubernetes/pki/etcd/peer.crt
ETCD_PEER_KEY_FILE=/etc/kubernetes/pki/etcd/peer.key
ETCD_PEER_TRUSTED_CA_FILE=/etc/kubernetes/pki/etcd/ca.crt
ETCD_PEER_CLIENT_CERT_AUTH=true
EOF"
done
# start all members together (a multi-member cluster only reports ready with quorum)
for i in $(seq 1 "$M"); do
    h=TH_HOST_$i
    ssh_ "${!h}" 'systemctl daemon-reload && systemctl enable --now etcd.service >/dev/null 2>&1' &
done
wait
for i in $(seq 1 "$M"); do h=TH_HOST_$i; echo "${!h}: etcd $(ssh_ "${!h}" systemctl is-active etcd)"; done

echo "--- health from the operator namespace (curl with client cert):"
ip netns exec "$TH_LAB_NETNS" curl -sS --cacert ca.crt --cert client.crt --key client.key "https://$TH_IP_1:2379/health"; echo
echo "--- same without a client cert (must fail: client-cert-auth=true):"
if ip netns exec "$TH_LAB_NETNS" curl -sS --max-time 5 --cacert ca.crt "https://$TH_IP_1:2379/health" 2>&1; then
    echo "UNEXPECTED: accepted without client cert"; exit 1
fi
echo
echo "--- etcdctl inside $TH_HOST_1:"
ssh_ "$TH_HOST_1" 'set -e
export ETCDCTL_API=3
P=/etc/kubernetes/pki/etcd
C="--endpoints=https://'"$TH_IP_1"':2379 --cacert=$P/ca.crt --cert=$P/client.crt --key=$P/client.key"
etcdctl version | head -1
etcdctl $C --write-out=table member list
etcdctl $C put /registry/rampart-lab ok >/dev/null
etcdctl $C get /registry/rampart-lab --print-value-only
mkdir -p /var/backups/etcd
etcdctl $C snapshot save /var/backups/etcd/snap.db 2>&1 | grep -i "saved"
etcdctl --write-out=table snapshot status /var/backups/etcd/snap.db'

echo "--- systemd timer inside $TH_HOST_1:"
ssh_ "$TH_HOST_1" 'cat > /etc/systemd/system/etcd-snapshot.service <<EOF
[Service]
Type=oneshot
ExecStart=/bin/sh -c "date +%%s >> /var/backups/etcd/ticks"
EOF
cat > /etc/systemd/system/etcd-snapshot.timer <<EOF
[Timer]
OnActiveSec=1s
OnUnitActiveSec=2s
AccuracySec=100ms
[Install]
WantedBy=timers.target
EOF
systemctl daemon-reload && systemctl enable --now etcd-snapshot.timer 2>/dev/null && sleep 5
echo "timer fired $(wc -l < /var/backups/etcd/ticks) times in 5s"
systemctl disable --now etcd-snapshot.timer 2>/dev/null'
echo "OK"
