//! The `binaries` and `backups` sections: where things live on the hosts, and
//! how etcd snapshots are scheduled, encrypted, kept and shipped.

use std::path::Path;

use super::{check_host_path, resolve, Problems};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// Binaries rampart installs or runs; a checksum for anything else is a typo.
const KNOWN_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "etcd",
    "etcdctl",
    "etcdutl",
];

pub(super) fn binaries(b: &RawBinaries, base: &Path, p: &mut Problems) -> Binaries {
    for (name, sum) in &b.sha256 {
        let at = format!("binaries.sha256.{name}");
        if sum.len() != 64 || !sum.bytes().all(|c| c.is_ascii_hexdigit()) {
            p.error(&at, "not a sha256 (64 hex digits, as printed by sha256sum)");
        }
        if !KNOWN_BINARIES.contains(&name.as_str()) {
            p.warning(
                &at,
                format!(
                    "`{name}` is not a binary rampart installs (expected one of {})",
                    KNOWN_BINARIES.join(", ")
                ),
            );
        }
    }
    if !b.sha256.is_empty() && b.artifacts.is_none() {
        p.warning(
            "binaries.sha256",
            "checksums are only used when uploading from binaries.artifacts, which is not set",
        );
    }
    if b.artifacts.as_deref().is_some_and(|a| a.trim().is_empty()) {
        p.error(
            "binaries.artifacts",
            "empty path: give the local folder holding the binaries, or remove the field",
        );
    }
    let dir = b.dir.clone().unwrap_or_else(|| "/usr/local/bin".into());
    check_host_path(&dir, "binaries.dir", p);
    let etcd_dir = b.etcd_dir.clone().unwrap_or_else(|| "/usr/bin".into());
    check_host_path(&etcd_dir, "binaries.etcdDir", p);
    Binaries {
        dir,
        etcd_dir,
        artifacts: b.artifacts.as_deref().map(|a| resolve(a, base)),
        sha256: b.sha256.clone(),
    }
}

/// The target host's pinned key (checked where the host's `ssh` is validated).
fn target_pin(hosts: &[RawHost], name: &str) -> Vec<String> {
    hosts
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| h.ssh.as_ref())
        .and_then(|s| s.host_key.clone())
        .into_iter()
        .collect()
}

pub(super) fn backups(b: &RawBackups, raw_hosts: &[RawHost], p: &mut Problems) -> Backups {
    recipients(&b.recipients, p);
    let schedule = b
        .schedule
        .clone()
        .unwrap_or_else(|| "*-*-* 00/6:00:00".into());
    if !super::calendar::is_calendar_spec(&schedule) {
        p.error(
            "backups.schedule",
            format!(
                "`{}` is not one systemd calendar expression (`[WEEKDAYS] [YEAR-MONTH-DAY] [HH:MM[:SS]] [TIMEZONE]`, e.g. `*-*-* 00/6:00:00`, or `daily`); check it with systemd-analyze calendar",
                schedule
            ),
        );
    }
    let randomized_delay = b.randomized_delay.clone().unwrap_or_else(|| "30min".into());
    if !is_timespan(&randomized_delay) {
        p.error(
            "backups.randomizedDelay",
            format!("`{randomized_delay}` is not a systemd time span (e.g. 30min, 1h, 0)"),
        );
    }
    let dir = b.dir.clone().unwrap_or_else(|| "/var/backups/etcd".into());
    check_host_path(&dir, "backups.dir", p);
    let target = b.target.as_ref().map(|t| {
        check_host_path(&t.path, "backups.target.path", p);
        let user = t.user.clone().unwrap_or_else(|| "rampart-backup".into());
        check_account(&user, "backups.target.user", p);
        BackupTarget {
            host: t.host.clone(),
            path: t.path.clone(),
            user,
            host_keys: target_pin(raw_hosts, &t.host),
            retention: retention(&t.retention, "backups.target.retention", p),
        }
    });
    Backups {
        schedule,
        randomized_delay,
        retention: retention(&b.retention, "backups.retention", p),
        recipients: b.recipients.clone(),
        dir,
        target,
    }
}

/// Accounts a Debian system already has (base-passwd, systemd, OpenSSH,
/// etcd): never the receiving account, which must be rampart's own.
const SYSTEM_ACCOUNTS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "_apt",
    "messagebus",
    "sshd",
    "etcd",
    "polkitd",
    "tss",
    "uuidd",
    "_chrony",
    "ntp",
    "postfix",
    "statd",
];

/// The receiving account: a new system user, so never root or an existing
/// service account a typo could hand the push keys to.
fn check_account(user: &str, at: &str, p: &mut Problems) {
    let valid = user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        p.error(
            at,
            format!(
                "`{user}` is not a user name (lower case letters, digits, `_` and `-`, at most 32)"
            ),
        );
    } else if SYSTEM_ACCOUNTS.contains(&user) || user.starts_with("systemd-") {
        p.error(
            at,
            format!("`{user}` is a system account: give a dedicated one (default rampart-backup)"),
        );
    }
}

/// `backups.target.host` names the one inventory host with the
/// `backup-target` role, and that host is not an etcd member: a copy kept on
/// a member is lost with it.
pub(super) fn target_placement(raw: &RawInventory, p: &mut Problems) {
    let target = raw
        .backups
        .as_ref()
        .and_then(|b| b.target.as_ref())
        .map(|t| t.host.as_str());
    let has = |h: &RawHost, role: &str| h.roles.iter().any(|r| r == role);
    for (i, h) in raw.hosts.iter().enumerate() {
        let named = Some(h.name.as_str()) == target;
        if has(h, "backup-target") && !named {
            p.error(
                format!("hosts[{i}].roles"),
                match target {
                    Some(t) => format!(
                        "`{}` has the backup-target role but backups.target.host is `{t}`",
                        h.name
                    ),
                    None => format!(
                        "`{}` has the backup-target role but there is no backups.target to receive",
                        h.name
                    ),
                },
            );
        }
        if named && !has(h, "backup-target") {
            p.error(
                format!("hosts[{i}].roles"),
                format!(
                    "`{}` is backups.target.host: add the backup-target role",
                    h.name
                ),
            );
        }
        if named && has(h, "etcd") {
            p.error(
                "backups.target.host",
                format!("`{}` is an etcd member: copies kept on a member are lost with it; pick a host outside the etcd cluster", h.name),
            );
        }
    }
    if let Some(t) = target {
        if !raw.hosts.iter().any(|h| h.name == t) {
            p.error(
                "backups.target.host",
                format!("`{t}` is not a host of the inventory: add it to hosts with the backup-target role"),
            );
        }
    }
}

fn recipients(rs: &[String], p: &mut Problems) {
    if rs.is_empty() {
        p.error(
            "backups.recipients",
            "at least one age recipient is needed: backups are always encrypted (create one with age-keygen)",
        );
    }
    for (i, r) in rs.iter().enumerate() {
        let r = r.trim();
        let ok =
            r.parse::<age::x25519::Recipient>().is_ok() || r.parse::<age::ssh::Recipient>().is_ok();
        if !ok {
            let why = if r.starts_with("AGE-SECRET-KEY-") {
                "this is an age secret key: give its public key (age-keygen -y), and keep the secret offline"
            } else {
                "not an age recipient (age1…) or an SSH public key (ssh-ed25519 …, ssh-rsa …)"
            };
            p.error(format!("backups.recipients[{i}]"), why);
        }
    }
}

/// Defaults: keep 28 backups when neither a count nor an age is given.
fn retention(r: &Option<RawRetention>, at: &str, p: &mut Problems) -> Retention {
    let r = r.clone().unwrap_or_default();
    if r.count == Some(0) {
        p.error(format!("{at}.count"), "must keep at least one backup");
    }
    if r.max_age_days == Some(0) {
        p.error(
            format!("{at}.maxAgeDays"),
            "0 days would delete every backup; give at least 1",
        );
    }
    Retention {
        count: r.count.or(if r.max_age_days.is_none() {
            Some(28)
        } else {
            None
        }),
        max_age_days: r.max_age_days,
    }
}

/// A systemd time span (`30min`, `1h 30min`, `90`, `1.5h`): numbers, each with an optional unit.
fn is_timespan(s: &str) -> bool {
    const UNITS: &[&str] = &[
        "", "usec", "us", "msec", "ms", "seconds", "second", "sec", "s", "minutes", "minute",
        "min", "m", "hours", "hour", "hr", "h", "days", "day", "d", "weeks", "week", "w", "months",
        "month", "M", "years", "year", "y",
    ];
    let mut rest = s.trim();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = rest[digits..].trim_start();
        let unit = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        if !UNITS.contains(&&rest[..unit]) {
            return false;
        }
        rest = rest[unit..].trim_start();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::is_timespan;

    #[test]
    fn timespans() {
        for ok in ["30min", "1h 30min", "0", "90", "2 h", "1d12h", "1.5h"] {
            assert!(is_timespan(ok), "{ok}");
        }
        for bad in ["", "soon", "30 minutes later", "-5min", "1..5h"] {
            assert!(!is_timespan(bad), "{bad}");
        }
    }
}
