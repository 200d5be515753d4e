#!/bin/sh
# rampart host scan, rendered by rampart; edits are overwritten on the next apply.
# Usage: scan.sh MANIFEST UNITS TEXTFILE
#   MANIFEST: sha256<TAB>mode<TAB>owner<TAB>group<TAB>path, a line per managed file
#   UNITS:    unit<TAB>binary…, a line per unit rampart runs here (a unit is
#             checked only when all its binaries are installed: apply starts a
#             group of services only with all of them)
#   TEXTFILE: node_exporter textfile the metrics are written to (atomically)
# Exits 1 when anything is off; every problem is printed to the journal.
# ROOT, when set, prefixes every host path (tests run it on a scratch root).
set -u
R="${ROOT:-}"
manifest=$1 units=$2 out=$3
tab=$(printf '\t')
drift=0 inactive=0 expiring=0 expired=0 certs=0
while IFS="$tab" read -r sha mode owner group path; do
    f="$R$path"
    if [ ! -e "$f" ]; then
        echo "drift: $path is missing"; drift=$((drift + 1)); continue
    fi
    have=$(stat -c '%a %U %G' -- "$f")
    if [ "$have" != "$mode $owner $group" ]; then
        echo "drift: $path is $have, rampart installed $mode $owner $group"; drift=$((drift + 1)); continue
    fi
    if [ "$(sha256sum -- "$f" | cut -d' ' -f1)" != "$sha" ]; then
        echo "drift: $path was changed on the host"; drift=$((drift + 1)); continue
    fi
    case "$path" in
    *.crt)
        if command -v openssl > /dev/null 2>&1; then
            certs=$((certs + 1))
            if ! openssl x509 -noout -checkend 0 -in "$f" > /dev/null 2>&1; then
                echo "certificate: $path has expired"; expired=$((expired + 1))
            elif ! openssl x509 -noout -checkend 2592000 -in "$f" > /dev/null 2>&1; then
                echo "certificate: $path expires within 30 days"; expiring=$((expiring + 1))
            fi
        fi
        ;;
    esac
done < "$R$manifest"
while IFS="$tab" read -r unit bins; do
    installed=1
    for b in $bins; do [ -x "$R$b" ] || installed=0; done
    [ "$installed" = 1 ] || continue
    if ! systemctl is-active --quiet "$unit"; then
        echo "unit: $unit is $(systemctl is-active "$unit")"; inactive=$((inactive + 1))
    fi
done < "$R$units"
dir=$(dirname "$R$out")
mkdir -p "$dir"
tmp=$(mktemp "$dir/.rampart.prom.XXXXXX") || exit 1
cat > "$tmp" <<METRICS
# HELP rampart_scan_drifted_files Managed files missing or changed (content, mode, owner) since rampart installed them.
# TYPE rampart_scan_drifted_files gauge
rampart_scan_drifted_files $drift
# HELP rampart_scan_inactive_units Units rampart runs on this host that are installed and not active.
# TYPE rampart_scan_inactive_units gauge
rampart_scan_inactive_units $inactive
# HELP rampart_scan_certificates Certificates checked for expiry (0 without openssl on the host).
# TYPE rampart_scan_certificates gauge
rampart_scan_certificates $certs
# HELP rampart_scan_certificates_expiring Certificates that expire within 30 days.
# TYPE rampart_scan_certificates_expiring gauge
rampart_scan_certificates_expiring $expiring
# HELP rampart_scan_certificates_expired Certificates that have expired.
# TYPE rampart_scan_certificates_expired gauge
rampart_scan_certificates_expired $expired
# HELP rampart_scan_last_run_timestamp_seconds When the scan last ran.
# TYPE rampart_scan_last_run_timestamp_seconds gauge
rampart_scan_last_run_timestamp_seconds $(date +%s)
METRICS
chmod 0644 "$tmp" && mv -f "$tmp" "$R$out"
problems=$((drift + inactive + expiring + expired))
echo "rampart scan: $drift drifted file(s), $inactive inactive unit(s), $expiring expiring and $expired expired certificate(s) of $certs"
[ "$problems" = 0 ]
