//! Where rampart keeps things on hosts, and the small host-side values that
//! several layers name: the renderer (what hosts hold), the planner (what
//! changes), the scripts sent to hosts and the runbooks. A leaf module, so
//! none of those has to import another for a path.

use serde::{Deserialize, Serialize};

/// Where rampart keeps its own bookkeeping on a host.
pub const STATE_DIR: &str = "/var/lib/rampart";
/// What rampart installed last time (drives removals).
pub const RECORD: &str = "/var/lib/rampart/record.json";
/// Hold files: a unit whose file exists here cannot start (its
/// `ConditionPathExists=!`); `backup restore` holds what talks to etcd.
pub const HOLD_DIR: &str = "/var/lib/rampart/hold";
/// The per-host lock.
pub const LOCK: &str = "/var/lib/rampart/lock";
/// Previous versions of replaced files, per apply.
pub const BACKUP_DIR: &str = "/var/lib/rampart/backup";
/// The cluster manifests (RBAC, tenants) on control-plane hosts.
pub const ADDONS_DIR: &str = "/etc/kubernetes/addons";
/// The binding that gives admin.conf's group cluster-admin: applied first,
/// with the super-admin credential when admin.conf cannot yet do it itself.
pub const CLUSTER_ADMINS_ADDON: &str = "/etc/kubernetes/addons/cluster-admins.yaml";
/// sha256 of the manifests last applied to the cluster, on each control plane.
pub const ADDONS_STAMP: &str = "/var/lib/rampart/addons.applied";

/// `/proc/sys/<key with dots as slashes>`.
pub fn proc_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// A system account the host must have (the backup target's receiving user).
/// Created locked to passwords (`*`) with `/bin/sh` as its shell: sshd runs
/// the forced command through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemUser {
    pub name: String,
    pub home: String,
}
