//! The job's config file, `/etc/rampart/backup.yaml`: everything the agent needs,
//! so it never reads the inventory (which hosts do not have).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BackupError, RetentionPolicy};
use crate::inventory::Host;
use crate::inventory::Inventory;

/// Where `apply` installs the config on each etcd member.
pub const CONFIG_PATH: &str = "/etc/rampart/backup.yaml";
/// Where the units go (see [`super::units`]).
pub const SERVICE_PATH: &str = "/etc/systemd/system/rampart-backup.service";
pub const TIMER_PATH: &str = "/etc/systemd/system/rampart-backup.timer";

/// The private half of this member's push key (an SSH key the target host
/// accepts for `rampart agent receive` only); see [`TargetConfig`].
pub const PUSH_KEY_PATH: &str = "/etc/rampart/backup-push.key";
/// Where `apply` puts rampart itself on members and on the backup target.
pub const RAMPART_PATH: &str = "/usr/local/bin/rampart";

/// The healthcheck client: the only etcd client certificate kept on every member,
/// and one with no role beyond reading (it is what `etcdctl endpoint health` uses).
const PKI: &str = "/etc/kubernetes/pki/etcd";

/// What `rampart agent snapshot` does, on one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub cluster: String,
    /// This member's inventory name; it goes into file names and the manifest.
    pub member: String,
    pub etcdctl: PathBuf,
    /// Used for `snapshot status` when the file exists (etcd ≥ 3.5 moved it there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcdutl: Option<PathBuf>,
    /// The local member only: a snapshot of *this* member's data.
    pub endpoint: String,
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// age recipients as written in the inventory (age1… or SSH public keys).
    pub recipients: Vec<String>,
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// Copy each new backup to this host after it is written locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetConfig>,
}

/// Where and how a member copies its backups (`backups.target`). The member
/// logs in with its own push key; the target's `authorized_keys` ties that key
/// to a forced `rampart agent receive --member <this member>`, so a member can
/// only add its own backups there (retention on the target is the target's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetConfig {
    /// The target's inventory name, for messages.
    pub host: String,
    pub address: String,
    pub port: u16,
    /// The receiving account on the target (`backups.target.user`).
    pub user: String,
    /// The target's SSH host keys (OpenSSH public key lines): the server must
    /// present one of them; there is no known_hosts and no trust on first use.
    /// `apply` takes them from the target's pin or the admin's known_hosts.
    pub host_keys: Vec<String>,
    /// The member's private push key.
    pub identity: PathBuf,
}

fn default_dir() -> PathBuf {
    PathBuf::from("/var/backups/etcd")
}

impl AgentConfig {
    /// The config for `host`, or None when backups are off or `host` runs no etcd.
    pub fn from_inventory(inv: &Inventory, host: &Host) -> Option<AgentConfig> {
        let b = inv.backups.as_ref()?;
        if !host.roles.etcd {
            return None;
        }
        let etcd_dir = Path::new(&inv.binaries.etcd_dir);
        Some(AgentConfig {
            cluster: inv.cluster.name.clone(),
            member: host.name.clone(),
            etcdctl: etcd_dir.join("etcdctl"),
            etcdutl: Some(etcd_dir.join("etcdutl")),
            endpoint: "https://127.0.0.1:2379".into(),
            cacert: Path::new(PKI).join("ca.crt"),
            cert: Path::new(PKI).join("healthcheck-client.crt"),
            key: Path::new(PKI).join("healthcheck-client.key"),
            dir: PathBuf::from(&b.dir),
            recipients: b.recipients.iter().map(|r| r.trim().to_string()).collect(),
            retention: RetentionPolicy::from(&b.retention),
            target: b.target.as_ref().and_then(|t| {
                let target = inv.host(&t.host)?;
                Some(TargetConfig {
                    host: target.name.clone(),
                    address: target.address.to_string(),
                    port: target.ssh.port,
                    user: t.user.clone(),
                    host_keys: t.host_keys.clone(),
                    identity: PathBuf::from(PUSH_KEY_PATH),
                })
            }),
        })
    }

    pub fn to_yaml(&self) -> String {
        let body = serde_yaml::to_string(self).expect("a struct of strings and paths serializes");
        format!(
            "# Rendered by rampart for {}; edits are overwritten on the next apply.\n{body}",
            self.member
        )
    }

    pub fn from_yaml(text: &str, path: &Path) -> Result<AgentConfig, BackupError> {
        serde_yaml::from_str(text).map_err(|source| BackupError::ConfigParse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<AgentConfig, BackupError> {
        let text = std::fs::read_to_string(path).map_err(|source| BackupError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// `<cluster>-<member>-`: the prefix of this member's backups in `dir`.
    pub(crate) fn prefix(&self) -> String {
        super::names::prefix(&self.cluster, &self.member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::parse;

    const INV: &str = r#"
cluster:
  name: prod
  kubernetesVersion: "1.34"
hosts:
  - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
  - {name: w1, address: 10.0.0.2, roles: [worker]}
backups:
  recipients:
    - age1jyqgnpk7g9dmlvchtnq05q5dek9wsatdywuums8780kt2f7lt5nqfqjtz9
  retention: {count: 5, maxAgeDays: 10}
"#;

    fn inv(yaml: &str) -> Inventory {
        parse(yaml, Path::new("inventory.yaml")).unwrap().inventory
    }

    #[test]
    fn etcd_member_gets_a_config_that_round_trips() {
        let inv = inv(INV);
        let c = AgentConfig::from_inventory(&inv, inv.host("cp1").unwrap()).unwrap();
        assert_eq!(c.member, "cp1");
        assert_eq!(c.cluster, "prod");
        assert_eq!(c.dir, Path::new("/var/backups/etcd"));
        assert_eq!(c.etcdctl, Path::new("/usr/bin/etcdctl"));
        assert_eq!(
            c.key,
            Path::new("/etc/kubernetes/pki/etcd/healthcheck-client.key")
        );
        assert_eq!(
            c.retention,
            RetentionPolicy {
                count: Some(5),
                max_age_days: Some(10)
            }
        );
        let yaml = c.to_yaml();
        assert!(yaml.starts_with("# Rendered by rampart for cp1"), "{yaml}");
        assert_eq!(AgentConfig::from_yaml(&yaml, Path::new("x")).unwrap(), c);
    }

    #[test]
    fn no_config_without_backups_or_for_non_etcd_hosts() {
        let with = inv(INV);
        assert!(AgentConfig::from_inventory(&with, with.host("w1").unwrap()).is_none());
        let without = inv(INV.split("backups:").next().unwrap());
        assert!(AgentConfig::from_inventory(&without, without.host("cp1").unwrap()).is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let inv = inv(INV);
        let c = AgentConfig::from_inventory(&inv, inv.host("cp1").unwrap()).unwrap();
        let yaml = format!("{}colour: blue\n", c.to_yaml());
        let err = AgentConfig::from_yaml(&yaml, Path::new("/etc/rampart/backup.yaml")).unwrap_err();
        assert!(matches!(err, BackupError::ConfigParse { .. }), "{err}");
    }
}
