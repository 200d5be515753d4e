//! The rendered bundle: per host, the exact files (and directories) it must hold.
//!
//! A bundle is data. `render` builds it purely from the inventory and the PKI;
//! `rampart render` writes it to disk; `plan` (later) diffs it against hosts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// A systemd service a file feeds: when the file changes, the service restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    /// The nodes' container runtime: Debian's package and unit, rampart's
    /// config (a config change restarts it; running containers survive).
    Containerd,
    Kubelet,
    KubeProxy,
    /// The scheduled etcd backup job (`rampart-backup.timer` and its service).
    Backups,
    /// The hourly host scan (`rampart-scan.timer` and its service), on every host.
    Scan,
}

impl Service {
    pub const ALL: [Service; 9] = [
        Service::Etcd,
        Service::KubeApiserver,
        Service::KubeControllerManager,
        Service::KubeScheduler,
        Service::Containerd,
        Service::Kubelet,
        Service::KubeProxy,
        Service::Backups,
        Service::Scan,
    ];
    /// The systemd unit name without its suffix (also the binary's name, but
    /// for the backup job, which is rampart itself).
    pub fn name(self) -> &'static str {
        match self {
            Service::Etcd => "etcd",
            Service::KubeApiserver => "kube-apiserver",
            Service::KubeControllerManager => "kube-controller-manager",
            Service::KubeScheduler => "kube-scheduler",
            Service::Containerd => "containerd",
            Service::Kubelet => "kubelet",
            Service::KubeProxy => "kube-proxy",
            Service::Backups => "rampart-backup",
            Service::Scan => "rampart-scan",
        }
    }
    /// The unit rampart enables, starts and restarts: `<name>.service`, or the
    /// timer of a scheduled job (its service runs when the timer fires).
    pub fn unit(self) -> String {
        match self {
            Service::Backups => "rampart-backup.timer".into(),
            Service::Scan => "rampart-scan.timer".into(),
            s => format!("{}.service", s.name()),
        }
    }
    /// Whether rampart renders this service's unit file; containerd's comes
    /// with the host's package (rampart renders only its config).
    pub fn unit_rendered(self) -> bool {
        self != Service::Containerd
    }
    /// The services `apply` starts together with this one (its own start
    /// phase): a node is containerd, kubelet and kube-proxy; a control plane
    /// the apiserver, controller-manager and scheduler. A group with one
    /// binary missing is not started at all.
    pub fn group(self) -> &'static [Service] {
        const NODE: &[Service] = &[Service::Containerd, Service::Kubelet, Service::KubeProxy];
        const CONTROL_PLANE: &[Service] = &[
            Service::KubeApiserver,
            Service::KubeControllerManager,
            Service::KubeScheduler,
        ];
        match self {
            Service::Containerd | Service::Kubelet | Service::KubeProxy => NODE,
            Service::KubeApiserver | Service::KubeControllerManager | Service::KubeScheduler => {
                CONTROL_PLANE
            }
            Service::Etcd => &[Service::Etcd],
            Service::Backups => &[Service::Backups],
            Service::Scan => &[Service::Scan],
        }
    }
    /// The binary the unit runs.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Backups => "rampart",
            // A shell script: /bin/sh is on every host.
            Service::Scan => "sh",
            s => s.name(),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// File contents: plain text/bytes, or a secret that is never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Plain(Vec<u8>),
    Secret(Secret),
}

impl Contents {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Contents::Plain(b) => b,
            Contents::Secret(s) => s.expose(),
        }
    }
    pub fn is_secret(&self) -> bool {
        matches!(self, Contents::Secret(_))
    }
}

/// One file on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Absolute path on the host.
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub contents: Contents,
    /// Services to restart when this file changes.
    pub services: Vec<Service>,
}

impl File {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.contents.bytes()))
    }
}

/// A directory the host must have, with its mode and owner (e.g. the etcd data dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dir {
    pub path: String,
    #[serde(with = "octal")]
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

pub use crate::layout::SystemUser;

/// Everything one host must hold.
#[derive(Debug, Clone, Default)]
pub struct HostBundle {
    /// Sorted by path, unique.
    pub files: Vec<File>,
    /// Sorted by path, unique; parents before children.
    pub dirs: Vec<Dir>,
    /// Services this host runs, in start order.
    pub services: Vec<Service>,
    /// Accounts to create before the directories they own.
    pub users: Vec<SystemUser>,
    /// The host runs `rampart agent receive` (it is the backup target), so it
    /// gets rampart itself like an etcd member with backups does.
    pub receives_backups: bool,
}

impl HostBundle {
    pub fn file(&self, path: &str) -> Option<&File> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Per host name, in inventory order of names (BTreeMap: sorted, stable output).
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    pub hosts: BTreeMap<String, HostBundle>,
}

/// The manifest entry of one file: what the host must end up with, minus the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    #[serde(with = "octal")]
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub sha256: String,
    pub secret: bool,
    pub services: Vec<Service>,
}

/// `manifest.json` of one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub host: String,
    pub services: Vec<Service>,
    pub dirs: Vec<Dir>,
    pub files: Vec<ManifestEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<SystemUser>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receives_backups: bool,
}

impl HostBundle {
    pub fn manifest(&self, host: &str) -> Manifest {
        Manifest {
            host: host.to_string(),
            services: self.services.clone(),
            dirs: self.dirs.clone(),
            files: self
                .files
                .iter()
                .map(|f| ManifestEntry {
                    path: f.path.clone(),
                    mode: f.mode,
                    owner: f.owner.clone(),
                    group: f.group.clone(),
                    sha256: f.sha256(),
                    secret: f.contents.is_secret(),
                    services: f.services.clone(),
                })
                .collect(),
            users: self.users.clone(),
            receives_backups: self.receives_backups,
        }
    }
}

/// Modes as `"0600"` in manifests: what admins read in `ls -l` and chmod.
pub(crate) mod octal {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8)
            .map_err(|_| D::Error::custom(format!("mode `{text}` is not octal")))
    }
}

/// Writes `<out>/<host>/<absolute path>` for every file plus `<out>/<host>/manifest.json`.
///
/// Local copies keep the rendered mode (so secrets are 0600 here too); owners
/// are not applied locally, they are in the manifest.
pub fn write_bundle(bundle: &Bundle, out: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true).mode(0o700);
    for (host, hb) in &bundle.hosts {
        let root = out.join(host);
        dirs.create(&root)?;
        // manifest.json goes last: a host dir without one is incomplete, and
        // `read_bundle` ignores it.
        let manifest_path = root.join("manifest.json");
        if manifest_path.exists() {
            std::fs::remove_file(&manifest_path)?;
        }
        let mut made = std::collections::HashSet::new();
        for f in &hb.files {
            let dest = root.join(f.path.trim_start_matches('/'));
            if let Some(parent) = dest.parent() {
                // One mkdir per directory, not one per file: inode work is what costs here.
                if made.insert(parent.to_path_buf()) {
                    dirs.create(parent)?;
                }
            }
            write_file(&dest, f.contents.bytes(), f.mode)?;
        }
        let manifest =
            serde_json::to_vec_pretty(&hb.manifest(host)).map_err(std::io::Error::other)?;
        write_file(&manifest_path, &manifest, 0o644)?;
    }
    Ok(())
}

/// A new file is created in place (`O_EXCL`, mode set at creation): a fresh render
/// costs one inode per file, which is what matters for 1,000-host bundles on slow
/// disks. An existing file is replaced through a temp file and a rename, so a
/// re-render never leaves a half-written file where a good one was.
fn write_file(dest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let create = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    match create(dest) {
        Ok(mut file) => {
            file.write_all(bytes)?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let tmp = dest.with_extension("rampart-tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut file = create(&tmp)?;
            file.write_all(bytes)?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            drop(file);
            std::fs::rename(&tmp, dest)
        }
        Err(e) => Err(e),
    }
}
