//! What a host told us: the parsed output of `remote::script::facts`.
//!
//! Host facts come from the host (hashes, stat, systemctl), never from local
//! memory of a previous run: a file edited by hand shows up as a change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Mode, owner and hash of one file on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileFact {
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// `regular file`, `directory`, … as `stat %F` says.
    pub kind: String,
    /// None when the file exists but could not be hashed (not a regular file).
    pub sha256: Option<String>,
    /// Last modified (seconds since the epoch), when the host said.
    pub mtime: Option<i64>,
}

/// `systemctl is-active` / `is-enabled` of one unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceFact {
    pub active: String,
    pub enabled: String,
    /// When it last became active (seconds since the epoch); None when
    /// it never did or the host did not say.
    pub since: Option<i64>,
}

impl ServiceFact {
    pub fn is_active(&self) -> bool {
        self.active == "active" || self.active == "activating" || self.active == "reloading"
    }
    pub fn is_enabled(&self) -> bool {
        self.enabled == "enabled"
    }
}

/// One kernel setting as `/proc/sys` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SysctlFact {
    /// None when the host has no such setting.
    pub value: Option<String>,
    /// rampart could set it (root may write the file).
    pub writable: bool,
}

/// What rampart installed on the host last time (`/var/lib/rampart/record.json`):
/// the basis for removing files it no longer manages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub files: Vec<String>,
}

/// Everything the planner and the preflight checks know about a host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub os_id: String,
    pub os_version: String,
    /// Host clock, seconds since the epoch.
    pub time: Option<i64>,
    /// `systemctl --version`'s number, None without systemd.
    pub systemd: Option<u32>,
    /// Free KiB where the etcd data lives.
    pub disk_free_kib: Option<u64>,
    pub listening: BTreeSet<u16>,
    /// Active swap areas (None: not reported).
    pub swaps: Option<u32>,
    /// Binary name → first line of its version output; None when absent.
    pub binaries: BTreeMap<String, Option<String>>,
    pub users: BTreeMap<String, bool>,
    pub services: BTreeMap<String, ServiceFact>,
    pub record: Option<Record>,
    pub files: BTreeMap<String, FileFact>,
    pub dirs: BTreeMap<String, FileFact>,
    /// Dotted key → value in effect.
    pub sysctls: BTreeMap<String, SysctlFact>,
    /// Unit → the restore id that holds it stopped (`/var/lib/rampart/hold`).
    pub holds: BTreeMap<String, String>,
}

/// The facts output could not be read (a broken host or a script bug).
#[derive(Debug, thiserror::Error)]
#[error("unreadable host facts at line {line}: {reason}")]
pub struct FactsError {
    pub line: usize,
    pub reason: String,
}

impl HostFacts {
    /// Parses the tab-separated lines of the facts script. The script ends
    /// with `end`: output without it is truncated and refused.
    pub fn parse(text: &str) -> Result<HostFacts, FactsError> {
        let mut f = HostFacts::default();
        let mut ended = false;
        for (i, line) in text.lines().enumerate() {
            let err = |reason: &str| FactsError {
                line: i + 1,
                reason: format!("{reason}: `{line}`"),
            };
            let cols: Vec<&str> = line.split('\t').collect();
            match cols.as_slice() {
                ["os", id, version] => {
                    f.os_id = id.to_string();
                    f.os_version = version.to_string();
                }
                ["time", t] => f.time = t.parse().ok(),
                ["systemd", v] => f.systemd = v.parse().ok(),
                ["disk", kib] => f.disk_free_kib = kib.parse().ok(),
                ["swap", n] => f.swaps = n.trim().parse().ok(),
                ["listen", ports] => {
                    f.listening.extend(
                        ports
                            .split_whitespace()
                            .filter_map(|p| p.parse::<u16>().ok()),
                    );
                }
                ["bin", name, version] => {
                    let v = (*version != "-").then(|| version.to_string());
                    f.binaries.insert(name.to_string(), v);
                }
                ["user", name, yes] => {
                    f.users.insert(name.to_string(), *yes == "yes");
                }
                ["svc", name, active, enabled] => {
                    let svc = f.services.entry(name.to_string()).or_default();
                    svc.active = active.to_string();
                    svc.enabled = enabled.to_string();
                }
                ["since", name, since] => {
                    f.services.entry(name.to_string()).or_default().since =
                        since.strip_prefix('@').and_then(|t| t.parse().ok());
                }
                ["record", b64] => {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| err("record is not base64"))?;
                    // A record rampart cannot read is treated as absent: it only
                    // drives removals, and removing nothing is the safe side.
                    f.record = serde_json::from_slice(&bytes).ok();
                }
                ["stat", mode, owner, group, kind, mtime, path] => {
                    let entry = f.files.entry(format!("/{path}")).or_default();
                    entry.mode = u32::from_str_radix(mode, 8).map_err(|_| err("bad mode"))?;
                    entry.owner = owner.to_string();
                    entry.group = group.to_string();
                    entry.kind = kind.to_string();
                    entry.mtime = mtime.parse().ok();
                }
                ["dir", mode, owner, group, kind, path] => {
                    f.dirs.insert(
                        format!("/{path}"),
                        FileFact {
                            mode: u32::from_str_radix(mode, 8).map_err(|_| err("bad mode"))?,
                            owner: owner.to_string(),
                            group: group.to_string(),
                            kind: kind.to_string(),
                            sha256: None,
                            mtime: None,
                        },
                    );
                }
                ["sha", rest] => {
                    let (sha, path) = rest
                        .split_once("  ")
                        .ok_or_else(|| err("bad sha256 line"))?;
                    f.files.entry(format!("/{path}")).or_default().sha256 = Some(sha.to_string());
                }
                ["sysctl", key, value, writable] => {
                    f.sysctls.insert(
                        key.to_string(),
                        SysctlFact {
                            value: (*value != "-").then(|| value.to_string()),
                            writable: *writable == "rw",
                        },
                    );
                }
                ["hold", unit, id] => {
                    f.holds.insert(unit.to_string(), id.to_string());
                }
                ["end"] => ended = true,
                [""] => {}
                _ => return Err(err("unexpected line")),
            }
        }
        if !ended {
            return Err(FactsError {
                line: text.lines().count(),
                reason: "output ended early (no `end` line)".into(),
            });
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_line() {
        let text =
            "os\tdebian\t12\ntime\t1790000000\nsystemd\t252\ndisk\t1048576\nlisten\t22 2379\n\
bin\tetcd\tetcd Version: 3.4.23\nbin\tkubelet\t-\nuser\tetcd\tyes\nsvc\tetcd\tactive\tenabled\nsince\tetcd\t@1790000100\n\
dir\t700\tetcd\tetcd\tdirectory\tvar/lib/etcd\n\
stat\t600\troot\troot\tregular file\t1790000200\tetc/kubernetes/admin.conf\n\
sha\tabcd  etc/kubernetes/admin.conf\nend\n";
        let f = HostFacts::parse(text).unwrap();
        assert_eq!(f.os_id, "debian");
        assert_eq!(f.systemd, Some(252));
        assert_eq!(f.listening, BTreeSet::from([22, 2379]));
        assert_eq!(f.binaries["kubelet"], None);
        assert!(f.services["etcd"].is_active());
        assert_eq!(f.dirs["/var/lib/etcd"].owner, "etcd");
        let admin = &f.files["/etc/kubernetes/admin.conf"];
        assert_eq!((admin.mode, admin.sha256.as_deref()), (0o600, Some("abcd")));
        assert_eq!(
            (f.services["etcd"].since, admin.mtime),
            (Some(1790000100), Some(1790000200))
        );
    }

    #[test]
    fn truncated_output_is_refused() {
        let err = HostFacts::parse("os\tdebian\t12\n").unwrap_err();
        assert!(err.to_string().contains("ended early"), "{err}");
    }
}
