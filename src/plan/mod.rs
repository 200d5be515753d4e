//! The plan: per host, what changes, computed purely from the desired state
//! ([`desired::Desired`]) and what the host reported ([`facts::HostFacts`]).
//!
//! `rampart plan`, `apply --dry-run` and `apply` all call [`plan_host`] on the
//! same inputs; `apply` then executes the returned data. There is no second
//! code path that could disagree with what was shown.

pub mod desired;
pub mod facts;
pub mod preflight;
pub mod show;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::render::Service;
use desired::{Desired, Want};
use facts::HostFacts;

/// Where rampart keeps its own bookkeeping on a host.
pub const STATE_DIR: &str = "/var/lib/rampart";
/// What rampart installed last time (drives removals).
pub const RECORD: &str = "/var/lib/rampart/record.json";
/// The per-host lock.
pub const LOCK: &str = "/var/lib/rampart/lock";
/// Previous versions of replaced files, per apply.
pub const BACKUP_DIR: &str = "/var/lib/rampart/backup";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Remove,
}

/// One file that changes.
#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    pub path: String,
    pub action: Action,
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
        self.action == Action::Create
            || (self.action == Action::Update && self.what.iter().any(|w| w == "content"))
    }
}

/// A directory to create or fix.
#[derive(Debug, Clone, Serialize)]
pub struct DirChange {
    pub path: String,
    pub action: Action,
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
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub files: Vec<FileChange>,
    pub binaries: Vec<FileChange>,
    pub dirs: Vec<DirChange>,
    /// Managed files already as desired.
    pub unchanged: usize,
    /// A unit file changed: `systemctl daemon-reload` before any restart.
    pub daemon_reload: bool,
    /// Services to `systemctl enable`.
    pub enable: Vec<Service>,
    /// In start order.
    pub services: BTreeMap<Service, ServiceAction>,
    /// Every managed path after this apply (the new record).
    #[serde(skip)]
    pub record: Vec<String>,
}

impl HostPlan {
    pub fn is_noop(&self) -> bool {
        self.files.is_empty()
            && self.binaries.is_empty()
            && self.dirs.is_empty()
            && !self.daemon_reload
            && self.enable.is_empty()
            && self.services.is_empty()
    }
    /// Whether files, dirs or binaries change (the install phases have work).
    pub fn changes_files(&self) -> bool {
        !(self.files.is_empty() && self.binaries.is_empty() && self.dirs.is_empty())
    }
    /// Updated plain text files whose old content would make a readable diff.
    pub fn diffable(&self) -> Vec<String> {
        self.files
            .iter()
            .filter(|c| c.action == Action::Update && !c.secret && !c.binary)
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
    format!("/etc/systemd/system/{}.service", service.name())
}

fn compare(want: &Want, fact: Option<&facts::FileFact>) -> Option<FileChange> {
    let mut what = Vec::new();
    let action = match fact {
        None => Action::Create,
        Some(f) if f.kind != "regular file" => {
            what.push(format!("{} -> regular file", f.kind));
            what.push("content".to_string());
            Action::Update
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
            Action::Update
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
pub fn plan_host(host: &str, desired: &Desired, facts: &HostFacts) -> HostPlan {
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
                    action: Action::Remove,
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
                None => (Action::Create, vec![]),
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
                    (Action::Update, what)
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
        let because: Vec<String> = files
            .iter()
            .chain(&binaries)
            .filter(|c| c.action != Action::Remove && c.services.contains(&svc))
            .map(|c| c.path.clone())
            .collect();
        let state = facts.services.get(svc.name());
        if !because.is_empty() {
            services.insert(svc, ServiceAction::Restart { because });
        } else if !state.is_some_and(|s| s.is_active()) {
            services.insert(svc, ServiceAction::Start);
        }
        if !state.is_some_and(|s| s.is_enabled()) {
            enable.push(svc);
        }
    }
    let mut record: Vec<String> = desired
        .files
        .iter()
        .chain(&desired.binaries)
        .map(|w| w.path.clone())
        .collect();
    record.sort();
    HostPlan {
        host: host.to_string(),
        files,
        binaries,
        dirs,
        unchanged,
        daemon_reload,
        enable,
        services,
        record,
    }
}
