//! What a host must end up with: its rendered bundle plus the binaries rampart
//! uploads from the artifacts dir.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::digest::sha256_file;

use crate::inventory::Inventory;
use crate::render::{Contents, Dir, HostBundle, Service, SystemUser};

/// Where a desired file's bytes come from.
#[derive(Debug, Clone)]
pub enum Body {
    /// Rendered in memory.
    Rendered(Contents),
    /// A binary from the artifacts dir, streamed at upload time.
    Artifact { path: PathBuf, size: u64 },
}

/// One file the host must hold.
#[derive(Debug, Clone)]
pub struct Want {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub sha256: String,
    pub secret: bool,
    /// Services restarted when it changes.
    pub services: Vec<Service>,
    pub body: Body,
}

impl Want {
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::Rendered(c) => c.bytes().len() as u64,
            Body::Artifact { size, .. } => *size,
        }
    }
    pub fn is_binary(&self) -> bool {
        matches!(self.body, Body::Artifact { .. })
    }
}

/// The desired state of one host.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Rendered files, sorted by path.
    pub files: Vec<Want>,
    /// Binaries from the artifacts dir.
    pub binaries: Vec<Want>,
    pub dirs: Vec<Dir>,
    pub users: Vec<SystemUser>,
    /// In start order.
    pub services: Vec<Service>,
}

impl Desired {
    pub fn from_bundle(hb: &HostBundle, binaries: Vec<Want>) -> Desired {
        let files = hb
            .files
            .iter()
            .map(|f| Want {
                path: f.path.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
                sha256: f.sha256(),
                secret: f.contents.is_secret(),
                services: f.services.clone(),
                body: Body::Rendered(f.contents.clone()),
            })
            .collect();
        Desired {
            files,
            binaries,
            dirs: hb.dirs.clone(),
            users: hb.users.clone(),
            services: hb.services.clone(),
        }
    }
}

/// A binary a host needs: its name, where it goes, how to ask its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub name: &'static str,
    pub path: String,
    pub version_args: &'static str,
    /// The service it runs, if any (kubectl and etcdctl run none).
    pub service: Option<Service>,
    /// The service whose start phase needs it: its own, or for a tool the
    /// service its health gate talks to (etcdctl: etcd; kubectl: the apiserver).
    pub needed_for: Service,
}

/// Binaries a host with these services needs, where the inventory puts them;
/// with `receives_backups` (the backup target) also rampart itself.
pub fn needed_binaries(
    inv: &Inventory,
    services: &[Service],
    receives_backups: bool,
) -> Vec<Needed> {
    let dir = |d: &str, name: &str| format!("{}/{name}", d.trim_end_matches('/'));
    let mut out = Vec::new();
    if receives_backups && !services.contains(&Service::Backups) {
        out.push(Needed {
            name: Service::Backups.binary(),
            path: crate::backup::RAMPART_PATH.into(),
            version_args: "--version",
            service: None,
            needed_for: Service::Backups,
        });
    }
    for &svc in services {
        let path = match svc {
            Service::Etcd => dir(&inv.binaries.etcd_dir, svc.binary()),
            // The units and authorized_keys name this path, whatever binaries.dir says.
            Service::Backups => crate::backup::RAMPART_PATH.into(),
            _ => dir(&inv.binaries.dir, svc.binary()),
        };
        out.push(Needed {
            name: svc.binary(),
            path,
            version_args: "--version",
            service: Some(svc),
            needed_for: svc,
        });
    }
    if services.contains(&Service::Etcd) {
        out.push(Needed {
            name: "etcdctl",
            path: dir(&inv.binaries.etcd_dir, "etcdctl"),
            version_args: "version",
            service: None,
            needed_for: Service::Etcd,
        });
    }
    if services.contains(&Service::KubeApiserver) {
        out.push(Needed {
            name: "kubectl",
            path: dir(&inv.binaries.dir, "kubectl"),
            version_args: "version --client",
            service: None,
            needed_for: Service::KubeApiserver,
        });
    }
    out
}

/// An artifact that is missing, unreadable or not what the inventory pinned.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read artifact {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact {path} has sha256 {actual}, the inventory pins {expected}; download it again or fix binaries.sha256.{name}")]
    Mismatch {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// This very binary, for hosts that run the backup job (which is rampart
/// itself): uploaded like an artifact, so a host's copy always matches the
/// admin's, sha256 and all.
pub fn self_artifact() -> Result<(PathBuf, u64, String), ArtifactError> {
    let path = std::env::current_exe().map_err(|source| ArtifactError::Read {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let (sha, size) = sha256_file(&path).map_err(|source| ArtifactError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, size, sha))
}

/// Hashes the artifacts the hosts need (each once, whatever the host count)
/// and checks them against `binaries.sha256`. Binaries absent from the
/// artifacts dir are not uploaded (the host must have them).
pub fn artifacts(
    inv: &Inventory,
    names: &[&str],
) -> Result<BTreeMap<String, (PathBuf, u64, String)>, ArtifactError> {
    let mut out = BTreeMap::new();
    let Some(dir) = &inv.binaries.artifacts else {
        return Ok(out);
    };
    for &name in names {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let (sha, size) = sha256_file(&path).map_err(|source| ArtifactError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some(expected) = inv.binaries.sha256.get(name) {
            if !expected.eq_ignore_ascii_case(&sha) {
                return Err(ArtifactError::Mismatch {
                    name: name.to_string(),
                    path,
                    expected: expected.clone(),
                    actual: sha,
                });
            }
        }
        out.insert(name.to_string(), (path, size, sha));
    }
    Ok(out)
}

/// The uploads one host gets: the artifacts among the binaries it needs.
pub fn host_binaries(
    needed: &[Needed],
    artifacts: &BTreeMap<String, (PathBuf, u64, String)>,
) -> Vec<Want> {
    needed
        .iter()
        .filter_map(|n| {
            let (path, size, sha) = artifacts.get(n.name)?;
            Some(Want {
                path: n.path.clone(),
                mode: 0o755,
                owner: "root".into(),
                group: "root".into(),
                sha256: sha.clone(),
                secret: false,
                services: n.service.into_iter().collect(),
                body: Body::Artifact {
                    path: path.clone(),
                    size: *size,
                },
            })
        })
        .collect()
}
