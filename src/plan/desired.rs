//! What a host must end up with: its rendered bundle plus the binaries rampart
//! uploads from the artifacts dir.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::digest::DigestCache;

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
    /// Where it comes from, and so what preflight says when it is missing.
    pub source: Source,
    /// What its version line must say.
    pub version: VersionRule,
}

/// Where a binary comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// rampart uploads it from `binaries.artifacts` when it is there.
    Artifact,
    /// The host's Debian package (named here); rampart only checks it.
    Package(&'static str),
}

/// How a binary's version line is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRule {
    /// The inventory's Kubernetes `major.minor`.
    Kubernetes,
    /// etcd 3.4 or 3.5.
    Etcd,
    /// At least this `major.minor`.
    AtLeast(u32, u32),
    /// Present and executable; its output is not judged.
    Present,
}

/// Debian's CNI plugins (`containernetworking-plugins`) the bridge network uses.
const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

/// Binaries a host with these services needs, where the inventory puts them;
/// with `receives_backups` (the backup target) also rampart itself. Nodes also
/// need their runtime's pieces from the host's packages.
pub fn needed_binaries(
    inv: &Inventory,
    services: &[Service],
    receives_backups: bool,
) -> Vec<Needed> {
    let dir = |d: &str, name: &str| format!("{}/{name}", d.trim_end_matches('/'));
    let tool = |name, path: String, version_args, needed_for, source, version| Needed {
        name,
        path,
        version_args,
        service: None,
        needed_for,
        source,
        version,
    };
    let mut out = Vec::new();
    if receives_backups && !services.contains(&Service::Backups) {
        out.push(tool(
            Service::Backups.binary(),
            crate::backup::RAMPART_PATH.into(),
            "--version",
            Service::Backups,
            Source::Artifact,
            VersionRule::Present,
        ));
    }
    for &svc in services {
        let (path, source, version) = match svc {
            // A shell script run by /bin/sh: nothing to install or check.
            Service::Scan => continue,
            Service::Etcd => (
                dir(&inv.binaries.etcd_dir, svc.binary()),
                Source::Artifact,
                VersionRule::Etcd,
            ),
            // The units and authorized_keys name this path, whatever binaries.dir says.
            Service::Backups => (
                crate::backup::RAMPART_PATH.into(),
                Source::Artifact,
                VersionRule::Present,
            ),
            // Debian's package and unit; CRI v1, which the kubelet needs, came in 1.6.
            Service::Containerd => (
                "/usr/bin/containerd".into(),
                Source::Package("containerd"),
                VersionRule::AtLeast(1, 6),
            ),
            _ => (
                dir(&inv.binaries.dir, svc.binary()),
                Source::Artifact,
                VersionRule::Kubernetes,
            ),
        };
        out.push(Needed {
            name: svc.binary(),
            path,
            version_args: "--version",
            service: Some(svc),
            needed_for: svc,
            source,
            version,
        });
    }
    if services.contains(&Service::Etcd) {
        out.push(tool(
            "etcdctl",
            dir(&inv.binaries.etcd_dir, "etcdctl"),
            "version",
            Service::Etcd,
            Source::Artifact,
            VersionRule::Etcd,
        ));
    }
    if services.contains(&Service::KubeApiserver) {
        out.push(tool(
            "kubectl",
            dir(&inv.binaries.dir, "kubectl"),
            "version --client",
            Service::KubeApiserver,
            Source::Artifact,
            VersionRule::Kubernetes,
        ));
    }
    if services.contains(&Service::Kubelet) {
        let package = Source::Package;
        out.push(tool(
            "runc",
            "/usr/sbin/runc".into(),
            "--version",
            Service::Containerd,
            package("runc"),
            VersionRule::AtLeast(1, 1),
        ));
        for plugin in CNI_PLUGINS {
            out.push(tool(
                plugin,
                format!("/usr/lib/cni/{plugin}"),
                "",
                Service::Kubelet,
                package("containernetworking-plugins"),
                VersionRule::Present,
            ));
        }
        // kube-proxy's rules and the bridge plugin's masquerading.
        out.push(tool(
            "iptables",
            "/usr/sbin/iptables".into(),
            "--version",
            Service::KubeProxy,
            package("iptables"),
            VersionRule::Present,
        ));
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
pub fn self_artifact(cache: &mut DigestCache) -> Result<(PathBuf, u64, String), ArtifactError> {
    let path = std::env::current_exe().map_err(|source| ArtifactError::Read {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let (sha, size) = cache
        .sha256_file(&path)
        .map_err(|source| ArtifactError::Read {
            path: path.clone(),
            source,
        })?;
    Ok((path, size, sha))
}

/// Hashes the artifacts the hosts need (each once, whatever the host count;
/// from `cache` when a file is unchanged since it was last hashed) and checks
/// them against `binaries.sha256`. Binaries absent from the
/// artifacts dir are not uploaded (the host must have them).
pub fn artifacts(
    inv: &Inventory,
    names: &[&str],
    cache: &mut DigestCache,
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
        let (sha, size) = cache
            .sha256_file(&path)
            .map_err(|source| ArtifactError::Read {
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
        .filter(|n| n.source == Source::Artifact)
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
