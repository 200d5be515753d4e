//! The inventory file as written by the admin: serde types only.
//!
//! Everything that needs judgement (addresses, CIDRs, roles, versions, tenant
//! roles) stays a string here so that `validate` can report *every* problem at
//! once with its YAML path; a serde error would stop at the first one. Closed,
//! simple choices (key algorithm, encryption provider) are enums because serde's
//! "unknown variant, expected one of …" message is already the right error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole inventory file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawInventory {
    pub cluster: RawCluster,
    #[serde(default)]
    pub ssh: RawSsh,
    pub hosts: Vec<RawHost>,
    #[serde(default)]
    pub binaries: RawBinaries,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub backups: Option<RawBackups>,
    #[serde(default)]
    pub runtime: RawRuntime,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCluster {
    pub name: String,
    /// `1.34` or `1.34.1`, with or without a leading `v`.
    pub kubernetes_version: String,
    /// `host:port` of the VIP or load balancer in front of the apiservers.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    #[serde(default)]
    pub service_cidr: Option<String>,
    #[serde(default)]
    pub pod_cidr: Option<String>,
    #[serde(default)]
    pub cluster_domain: Option<String>,
    /// The network the hosts' addresses live in; when given, every address must be inside it.
    #[serde(default)]
    pub node_network: Option<String>,
}

/// SSH settings: the top-level block is the default, each host may override any field.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSsh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    pub agent: Option<bool>,
    #[serde(rename = "become")]
    pub become_: Option<Become>,
    pub known_hosts_file: Option<String>,
    pub bastion: Option<RawBastion>,
    /// Only meaningful per host: the host's public key, pinned (`ssh-ed25519 AAAA…`).
    pub host_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Become {
    None,
    Sudo,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBastion {
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<String>,
    pub host_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHost {
    pub name: String,
    pub address: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub extra_sans: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBinaries {
    /// Where the Kubernetes binaries live on the hosts (default `/usr/local/bin`).
    pub dir: Option<String>,
    /// Where etcd lives on the hosts (default `/usr/bin`, Debian's etcd-server).
    pub etcd_dir: Option<String>,
    /// A local directory to upload the binaries from; absent: they are already on the hosts.
    pub artifacts: Option<String>,
    /// Expected sha256 of each uploaded binary, by file name.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// The container runtime on nodes (containerd, from the hosts' packages).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRuntime {
    /// The pod sandbox ("pause") image containerd starts for every pod.
    pub sandbox_image: Option<String>,
    /// Never give a container a lower OOM score than containerd's own: for
    /// nodes that cannot lower OOM scores (unprivileged containers).
    pub restrict_oom_score_adj: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSecurity {
    pub key_algorithm: Option<KeyAlgorithm>,
    pub ca_validity_days: Option<u32>,
    pub leaf_validity_days: Option<u32>,
    pub service_account_token_max_hours: Option<u32>,
    pub encryption_provider: Option<EncryptionProvider>,
    pub audit_log: Option<RawAuditLog>,
    pub tls: Option<RawTls>,
    pub pod_security: Option<RawPodSecurity>,
}

/// Private-key algorithm for every generated key (CAs, leaves, service accounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

/// The EncryptionConfiguration provider for Secrets at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionProvider {
    #[default]
    Secretbox,
    Aescbc,
    Aesgcm,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAuditLog {
    pub max_age_days: Option<u32>,
    pub max_backups: Option<u32>,
    pub max_size_mb: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTls {
    /// `VersionTLS12` or `VersionTLS13`.
    pub min_version: Option<String>,
    /// IANA names as Kubernetes spells them (`TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`, …).
    pub cipher_suites: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPodSecurity {
    /// `restricted` (default), `baseline` or `privileged`.
    pub level: Option<String>,
    /// Namespaces exempt from enforcement (default: kube-system).
    pub exempt_namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTenant {
    pub namespace: String,
    #[serde(default)]
    pub quota: Option<RawQuota>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub network: Option<RawTenantNetwork>,
    #[serde(default)]
    pub members: Vec<RawMember>,
}

/// ResourceQuota hard limits (Kubernetes quantities as strings).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawQuota {
    pub requests_cpu: Option<String>,
    pub requests_memory: Option<String>,
    pub limits_cpu: Option<String>,
    pub limits_memory: Option<String>,
    pub pods: Option<u32>,
}

/// LimitRange container defaults (Kubernetes quantities as strings).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLimits {
    pub default_cpu: Option<String>,
    pub default_memory: Option<String>,
    pub default_request_cpu: Option<String>,
    pub default_request_memory: Option<String>,
    pub max_cpu: Option<String>,
    pub max_memory: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTenantNetwork {
    /// Allow egress to cluster DNS (default true).
    pub allow_dns: Option<bool>,
    /// Allow traffic between pods of the namespace (default false).
    pub allow_same_namespace: Option<bool>,
}

/// A user or a group (exactly one of the two) and its role in the namespace.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMember {
    pub user: Option<String>,
    pub group: Option<String>,
    /// `admin`, `edit` or `view`.
    pub role: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBackups {
    /// systemd OnCalendar expression (default every 6 hours).
    pub schedule: Option<String>,
    /// systemd RandomizedDelaySec (default `30min`).
    pub randomized_delay: Option<String>,
    #[serde(default)]
    pub retention: Option<RawRetention>,
    /// age recipients: `age1…` X25519 keys or `ssh-ed25519`/`ssh-rsa` public keys.
    pub recipients: Vec<String>,
    /// Directory on the etcd members (default `/var/backups/etcd`).
    pub dir: Option<String>,
    #[serde(default)]
    pub target: Option<RawBackupTarget>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetention {
    pub count: Option<u32>,
    pub max_age_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBackupTarget {
    /// The inventory name of the host that receives the copies.
    pub host: String,
    pub path: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub retention: Option<RawRetention>,
}
