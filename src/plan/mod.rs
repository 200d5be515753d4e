//! The plan: per host, what changes, computed purely from the desired state
//! ([`desired::Desired`]) and what the host reported ([`facts::HostFacts`]).
//!
//! `rampart plan`, `apply --dry-run` and `apply` all call [`plan_host`] on the
//! same inputs; `apply` then executes the returned data. There is no second
//! code path that could disagree with what was shown.

pub mod desired;
pub mod facts;
pub mod kernel;
pub mod preflight;
pub mod show;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::render::{Service, SystemUser};
use desired::{Desired, Want};
use facts::{HostFacts, ServiceFact};

pub use crate::layout::{
    ADDONS_DIR, ADDONS_STAMP, BACKUP_DIR, CLUSTER_ADMINS_ADDON, HOLD_DIR, LOCK, RECORD, STATE_DIR,
};

/// What this run will not do (`--skip-phases`), so the plan shows only what
/// will happen: skipped starts are not listed as restarts.
#[derive(Debug, Clone, Default)]
pub struct Skips {
    /// Services whose start phase is skipped.
    pub not_starting: Vec<Service>,
    /// The apply-manifests phase is skipped.
    pub manifests: bool,
    /// The kernel-settings phase is skipped: the plan sets no kernel value.
    pub kernel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Create,
    Update,
    Remove,
}

/// One file that changes.
#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    pub path: String,
    pub action: FileAction,
    /// What differs for an update: `content`, `mode 0644 -> 0600`, `owner a:b -> c:d`.
    pub what: Vec<String>,
    #[serde(with = "crate::render::octal")]
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// The new content's sha256 (empty for a removal).
    pub sha256: String,
    pub secret: bool,
    pub binary: bool,
    pub services: Vec<Service>,
    /// Unified diff of a non-secret text file, when the old content was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl FileChange {
    /// Whether the bytes must be (re)sent: creations and content changes.
    pub fn needs_upload(&self) -> bool {
        self.action == FileAction::Create
            || (self.action == FileAction::Update && self.what.iter().any(|w| w == "content"))
    }
}

/// A directory to create or fix.
#[derive(Debug, Clone, Serialize)]
pub struct DirChange {
    pub path: String,
    pub action: FileAction,
    pub what: Vec<String>,
    #[serde(with = "crate::render::octal")]
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum ServiceAction {
    /// Inputs changed: restart (or start, if it is not running).
    Restart { because: Vec<String> },
    /// Nothing changed but it is not running.
    Start,
}

/// Everything that changes on one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub files: Vec<FileChange>,
    pub binaries: Vec<FileChange>,
    pub dirs: Vec<DirChange>,
    /// System accounts to create (before the directories they own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<SystemUser>,
    /// Managed files already as desired.
    pub unchanged: usize,
    /// A unit file changed: `systemctl daemon-reload` before any restart.
    pub daemon_reload: bool,
    /// The cluster manifests changed since they were last applied (or never were).
    pub apply_manifests: bool,
    /// Services to `systemctl enable`.
    pub enable: Vec<Service>,
    /// Kernel settings to set now (their sysctl.d file only acts at boot).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<kernel::SysctlChange>,
    /// Kernel settings that differ and cannot be set on this host: not work
    /// for apply, a preflight finding.
    #[serde(skip)]
    pub sysctls_unsettable: Vec<kernel::SysctlChange>,
    /// rampart's modules-load.d list changed: load its modules now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub load_modules: bool,
    /// In start order.
    pub services: BTreeMap<Service, ServiceAction>,
    /// Every managed path after this apply (the new record).
    #[serde(skip)]
    pub record: Vec<String>,
    /// The host's record differs from `record`: it is rewritten (bookkeeping
    /// only, not a change an admin needs to see).
    #[serde(skip)]
    pub record_changed: bool,
}

impl HostPlan {
    pub fn is_noop(&self) -> bool {
        self.files.is_empty()
            && self.binaries.is_empty()
            && self.dirs.is_empty()
            && self.users.is_empty()
            && !self.daemon_reload
            && self.enable.is_empty()
            && self.sysctls.is_empty()
            && self.services.is_empty()
            && !self.apply_manifests
    }
    /// Whether files, dirs or binaries change (the install phases have work).
    pub fn changes_files(&self) -> bool {
        !(self.files.is_empty()
            && self.binaries.is_empty()
            && self.dirs.is_empty()
            && self.users.is_empty())
    }
    /// Updated plain text files whose old content would make a readable diff.
    pub fn diffable(&self) -> Vec<String> {
        self.files
            .iter()
            .filter(|c| c.action == FileAction::Update && !c.secret && !c.binary)
            .filter(|c| c.what.iter().any(|w| w == "content"))
            .map(|c| c.path.clone())
            .collect()
    }
    /// Adds unified diffs from the old contents fetched from the host.
    pub fn attach_diffs(&mut self, old: &BTreeMap<String, Vec<u8>>, desired: &Desired) {
        for change in &mut self.files {
            let (Some(before), Some(want)) = (
                old.get(&change.path),
                desired.files.iter().find(|w| w.path == change.path),
            ) else {
                continue;
            };
            if let desired::Body::Rendered(c) = &want.body {
                change.diff = show::unified_diff(&change.path, before, c.bytes());
            }
        }
    }
}

/// The unit file path of a service.
pub fn unit_path(service: Service) -> String {
    format!("/etc/systemd/system/{}", service.unit())
}

fn compare(want: &Want, fact: Option<&facts::FileFact>) -> Option<FileChange> {
    let mut what = Vec::new();
    let action = match fact {
        None => FileAction::Create,
        Some(f) if f.kind != "regular file" => {
            what.push(format!("{} -> regular file", f.kind));
            what.push("content".to_string());
            FileAction::Update
        }
        Some(f) => {
            if f.sha256.as_deref() != Some(want.sha256.as_str()) {
                what.push("content".to_string());
            }
            if f.mode != want.mode {
                what.push(format!("mode {:04o} -> {:04o}", f.mode, want.mode));
            }
            if (f.owner.as_str(), f.group.as_str()) != (want.owner.as_str(), want.group.as_str()) {
                what.push(format!(
                    "owner {}:{} -> {}:{}",
                    f.owner, f.group, want.owner, want.group
                ));
            }
            if what.is_empty() {
                return None;
            }
            FileAction::Update
        }
    };
    Some(FileChange {
        path: want.path.clone(),
        action,
        what,
        mode: want.mode,
        owner: want.owner.clone(),
        group: want.group.clone(),
        sha256: want.sha256.clone(),
        secret: want.secret,
        binary: want.is_binary(),
        services: want.services.clone(),
        diff: None,
    })
}

/// Diffs one host's desired state against its facts.
pub fn plan_host(host: &str, desired: &Desired, facts: &HostFacts, skips: &Skips) -> HostPlan {
    let mut files = Vec::new();
    let mut unchanged = 0;
    for want in &desired.files {
        match compare(want, facts.files.get(&want.path)) {
            Some(c) => files.push(c),
            None => unchanged += 1,
        }
    }
    // Files rampart installed before and no longer manages (a role removed,
    // a tenant dropped): removed, with the old copy kept in the backup dir.
    if let Some(record) = &facts.record {
        for path in &record.files {
            let managed = desired
                .files
                .iter()
                .chain(&desired.binaries)
                .any(|w| &w.path == path);
            if !managed && facts.files.contains_key(path) {
                files.push(FileChange {
                    path: path.clone(),
                    action: FileAction::Remove,
                    what: vec![],
                    mode: 0,
                    owner: String::new(),
                    group: String::new(),
                    sha256: String::new(),
                    secret: false,
                    binary: false,
                    services: vec![],
                    diff: None,
                });
            }
        }
    }
    let binaries: Vec<FileChange> = desired
        .binaries
        .iter()
        .filter_map(|w| compare(w, facts.files.get(&w.path)))
        .collect();
    let dirs = desired
        .dirs
        .iter()
        .filter_map(|d| {
            let (action, what) = match facts.dirs.get(&d.path) {
                None => (FileAction::Create, vec![]),
                Some(f) => {
                    let mut what = Vec::new();
                    if f.mode != d.mode {
                        what.push(format!("mode {:04o} -> {:04o}", f.mode, d.mode));
                    }
                    if (f.owner.as_str(), f.group.as_str()) != (d.owner.as_str(), d.group.as_str())
                    {
                        what.push(format!(
                            "owner {}:{} -> {}:{}",
                            f.owner, f.group, d.owner, d.group
                        ));
                    }
                    if what.is_empty() {
                        return None;
                    }
                    (FileAction::Update, what)
                }
            };
            Some(DirChange {
                path: d.path.clone(),
                action,
                what,
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            })
        })
        .collect();
    let daemon_reload = files
        .iter()
        .any(|c| c.path.starts_with("/etc/systemd/system/"));
    let mut services = BTreeMap::new();
    let mut enable = Vec::new();
    for &svc in &desired.services {
        if !state_enabled(facts, svc) {
            enable.push(svc);
        }
        if skips.not_starting.contains(&svc) {
            continue;
        }
        let because: Vec<String> = files
            .iter()
            .chain(&binaries)
            // New bytes restart a service; a mode or owner fix does not
            // change what it reads.
            .filter(|c| c.needs_upload() && c.services.contains(&svc))
            .map(|c| c.path.clone())
            .collect();
        let state = facts.services.get(&svc.unit());
        let because = if because.is_empty() {
            stale_inputs(desired, facts, svc, state)
        } else {
            because
        };
        if !because.is_empty() {
            services.insert(svc, ServiceAction::Restart { because });
        } else if !state.is_some_and(|s| s.is_active()) {
            services.insert(svc, ServiceAction::Start);
        }
    }
    let mut record: Vec<String> = desired
        .files
        .iter()
        .chain(&desired.binaries)
        .map(|w| w.path.clone())
        .collect();
    record.sort();
    let apply_manifests = !skips.manifests
        && addons_stamp(desired).is_some_and(|(_, sha)| {
            facts
                .files
                .get(ADDONS_STAMP)
                .and_then(|f| f.sha256.as_deref())
                != Some(sha.as_str())
        });
    let record_changed = facts.record.as_ref().map(|r| &r.files) != Some(&record);
    let users = desired
        .users
        .iter()
        .filter(|u| facts.users.get(&u.name) != Some(&true))
        .cloned()
        .collect();
    let load_modules = !skips.kernel
        && files
            .iter()
            .any(|c| c.path.starts_with(kernel::MODULES_DIR) && c.needs_upload());
    let (mut sysctls, sysctls_unsettable): (Vec<_>, Vec<_>) =
        kernel::changes(desired, facts, load_modules)
            .into_iter()
            .partition(|c| c.settable);
    if skips.kernel {
        sysctls.clear();
    }
    HostPlan {
        host: host.to_string(),
        files,
        binaries,
        dirs,
        users,
        unchanged,
        daemon_reload,
        enable,
        sysctls,
        sysctls_unsettable,
        load_modules,
        services,
        apply_manifests,
        record,
        record_changed,
    }
}

fn state_enabled(facts: &HostFacts, svc: Service) -> bool {
    facts
        .services
        .get(&svc.unit())
        .is_some_and(|s| s.is_enabled())
}

/// The stamp a control plane holds once its manifests are applied: the
/// sha256 of the manifests in path order (as `cat ADDONS_DIR/*.yaml` reads
/// them), and the sha256 of that stamp file. None without manifests.
pub fn addons_stamp(desired: &Desired) -> Option<(String, String)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut any = false;
    for w in desired
        .files
        .iter()
        .filter(|w| w.path.starts_with(&format!("{ADDONS_DIR}/")) && w.path.ends_with(".yaml"))
    {
        if let desired::Body::Rendered(c) = &w.body {
            hasher.update(c.bytes());
            any = true;
        }
    }
    if !any {
        return None;
    }
    let stamp = format!("{}\n", hex::encode(hasher.finalize()));
    let sha = hex::encode(Sha256::digest(stamp.as_bytes()));
    Some((stamp, sha))
}

/// The service's inputs the host wrote after the service last started: an
/// earlier run installed them and stopped before the restart (killed, or a
/// gate failed). The bytes match now, but what runs does not have them.
fn stale_inputs(
    desired: &Desired,
    facts: &HostFacts,
    svc: Service,
    state: Option<&ServiceFact>,
) -> Vec<String> {
    let Some(since) = state.filter(|s| s.is_active()).and_then(|s| s.since) else {
        return Vec::new();
    };
    desired
        .files
        .iter()
        .chain(&desired.binaries)
        .filter(|w| w.services.contains(&svc))
        .filter(|w| {
            facts
                .files
                .get(&w.path)
                .and_then(|f| f.mtime)
                .is_some_and(|m| m > since)
        })
        .map(|w| format!("{} (written after {} started)", w.path, svc.unit()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::facts::FileFact;
    use crate::render::Contents;

    /// etcd running, its CA file already holding the new bytes.
    fn etcd_host(ca_written: i64, etcd_since: i64) -> (Desired, HostFacts) {
        let bytes = b"new bundle".to_vec();
        let want = Want {
            path: "/etc/kubernetes/pki/etcd/ca.crt".into(),
            mode: 0o600,
            owner: "root".into(),
            group: "root".into(),
            sha256: crate::digest::sha256_hex(&bytes),
            secret: false,
            services: vec![Service::Etcd],
            body: desired::Body::Rendered(Contents::Plain(bytes)),
        };
        let mut facts = HostFacts::default();
        facts.files.insert(
            want.path.clone(),
            FileFact {
                mode: 0o600,
                owner: "root".into(),
                group: "root".into(),
                kind: "regular file".into(),
                sha256: Some(want.sha256.clone()),
                mtime: Some(ca_written),
            },
        );
        facts.services.insert(
            Service::Etcd.unit(),
            ServiceFact {
                active: "active".into(),
                enabled: "enabled".into(),
                since: Some(etcd_since),
            },
        );
        let desired = Desired {
            files: vec![want],
            binaries: vec![],
            dirs: vec![],
            users: vec![],
            services: vec![Service::Etcd],
        };
        (desired, facts)
    }

    #[test]
    fn a_service_older_than_its_installed_inputs_is_restarted() {
        // A run installed the file and was killed before the restart.
        let (desired, facts) = etcd_host(1_000, 900);
        let plan = plan_host("m1", &desired, &facts, &Skips::default());
        match plan.services.get(&Service::Etcd) {
            Some(ServiceAction::Restart { because }) => {
                assert!(
                    because[0].contains("written after etcd.service started"),
                    "{because:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Restarted since: nothing to do.
        let (desired, facts) = etcd_host(1_000, 1_000);
        let plan = plan_host("m1", &desired, &facts, &Skips::default());
        assert!(plan.services.is_empty(), "{:?}", plan.services);
    }
}
