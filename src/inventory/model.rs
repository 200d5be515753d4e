//! The validated inventory: what the rest of rampart works with.
//!
//! A value of these types has passed `validate`, so downstream code never
//! re-checks addresses, roles or CIDRs. Defaults are applied here, once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

pub use super::ranges::Ranges;
pub use super::schema::{Become, EncryptionProvider, KeyAlgorithm};

/// A whole, valid cluster description.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub cluster: Cluster,
    /// In file order; names and addresses are unique.
    pub hosts: Vec<Host>,
    pub binaries: Binaries,
    pub security: Security,
    pub tenants: Vec<Tenant>,
    pub backups: Option<Backups>,
    pub runtime: Runtime,
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    pub fn etcd_members(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.roles.etcd)
    }
    pub fn control_planes(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.roles.control_plane)
    }
    /// Hosts that run a kubelet: workers and control-plane nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.roles.runs_kubelet())
    }
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub version: KubeVersion,
    /// Where clients (kubelets, kube-proxy, admins) reach the apiservers.
    pub api_endpoint: Endpoint,
    /// Service ClusterIPs; the primary range's first address is the
    /// `kubernetes` Service.
    pub service_cidr: Ranges,
    /// Pod addresses; every node gets a range of each family.
    pub pod_cidr: Ranges,
    pub domain: String,
    pub node_network: Option<IpNet>,
}

impl Cluster {
    /// The service CIDR's network address plus one: the `kubernetes`
    /// Service's ClusterIP, as the apiserver allocates it (IPv4 and IPv6 alike;
    /// in the primary range of a dual-stack cluster, as kubeadm has it).
    pub fn kubernetes_service_ip(&self) -> IpAddr {
        nth_address(self.service_cidr.primary(), 1)
    }
    /// The network address plus ten, kubeadm's convention for cluster DNS.
    pub fn dns_service_ip(&self) -> IpAddr {
        nth_address(self.service_cidr.primary(), 10)
    }
    /// `https://host:port` for kubeconfigs.
    pub fn server_url(&self) -> String {
        self.api_endpoint.url()
    }
}

/// The network address of `net` plus `n`, or the network address itself
/// when `net` is too small (validation requires room for both).
///
/// Not `IpNet::hosts()`: for IPv6 it starts at the network address itself
/// (IPv6 has no broadcast to leave out), so the first "host" of
/// `fd00:96::/108` is `fd00:96::`, not `fd00:96::1` as Kubernetes has it.
fn nth_address(net: IpNet, n: u8) -> IpAddr {
    let fits = |bits: u8| u32::from(net.max_prefix_len() - net.prefix_len()) > u32::from(bits);
    match net.network() {
        IpAddr::V4(a) if fits(4) => IpAddr::V4((u32::from(a) + u32::from(n)).into()),
        IpAddr::V6(a) if fits(4) => IpAddr::V6((u128::from(a) + u128::from(n)).into()),
        other => other,
    }
}

/// A supported Kubernetes version (1.32–1.34).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    /// None when the inventory said only `1.34`.
    pub patch: Option<u32>,
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "v{}.{}.{}", self.major, self.minor, p),
            None => write!(f, "v{}.{}", self.major, self.minor),
        }
    }
}

/// `host:port`; host is a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("https://[{v6}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub etcd: bool,
    pub control_plane: bool,
    pub worker: bool,
    /// Receives copies of the etcd backups (`backups.target.host`); runs no
    /// Kubernetes or etcd service, only `rampart agent receive` over SSH.
    pub backup_target: bool,
}

impl Roles {
    /// Control-plane hosts run a kubelet too (tainted), so every node is reachable
    /// by the apiserver the same way; a pure etcd host does not.
    pub fn runs_kubelet(&self) -> bool {
        self.control_plane || self.worker
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.etcd, "etcd"),
            (self.control_plane, "control-plane"),
            (self.worker, "worker"),
            (self.backup_target, "backup-target"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// A subject alternative name given by the admin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// Parses an IP literal as an IP SAN, anything else as a DNS SAN.
    pub fn parse(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub address: IpAddr,
    pub roles: Roles,
    pub extra_sans: Vec<San>,
    pub labels: BTreeMap<String, String>,
    /// SSH settings with the inventory defaults already applied.
    pub ssh: SshTarget,
}

/// How to reach one host (defaults merged with the host's overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub agent: bool,
    pub become_: Become,
    pub known_hosts_file: Option<PathBuf>,
    pub bastion: Option<Bastion>,
    /// Pinned public key in OpenSSH format.
    pub host_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bastion {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
    pub host_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Binaries {
    /// Kubernetes binaries on the hosts.
    pub dir: String,
    /// etcd and etcdctl on the hosts.
    pub etcd_dir: String,
    pub artifacts: Option<PathBuf>,
    pub sha256: BTreeMap<String, String>,
}

/// containerd on the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// A valid image reference (see `validate::runtime`).
    pub sandbox_image: String,
    /// containerd's `restrict_oom_score_adj`.
    pub restrict_oom_score_adj: bool,
}

#[derive(Debug, Clone)]
pub struct Security {
    pub key_algorithm: KeyAlgorithm,
    pub ca_validity_days: u32,
    pub leaf_validity_days: u32,
    /// The longest a service-account token the apiserver issues lives
    /// (`--service-account-max-token-expiration`): how long a rotated-out
    /// signing key must still verify.
    pub service_account_token_max_hours: u32,
    pub encryption_provider: EncryptionProvider,
    pub audit_log: AuditLog,
    pub tls: Tls,
    pub pod_security: PodSecurity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLog {
    pub max_age_days: u32,
    pub max_backups: u32,
    pub max_size_mb: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// The spelling Kubernetes components accept (`VersionTLS12`).
    pub fn kube_name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "VersionTLS12",
            TlsVersion::Tls13 => "VersionTLS13",
        }
    }
    /// The spelling etcd accepts (`TLS1.2`); etcd 3.4 has no such flag and ignores it.
    pub fn etcd_name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub min_version: TlsVersion,
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSecurityLevel {
    Privileged,
    Baseline,
    Restricted,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Privileged => "privileged",
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PodSecurity {
    pub level: PodSecurityLevel,
    pub exempt_namespaces: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub namespace: String,
    pub quota: Quota,
    pub limits: Limits,
    pub allow_dns: bool,
    pub allow_same_namespace: bool,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_cpu: String,
    pub limits_memory: String,
    pub pods: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub default_cpu: String,
    pub default_memory: String,
    pub default_request_cpu: String,
    pub default_request_memory: String,
    pub max_cpu: String,
    pub max_memory: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantRole {
    Admin,
    Edit,
    View,
}

impl TenantRole {
    /// The built-in ClusterRole a RoleBinding for this role refers to.
    pub fn cluster_role(self) -> &'static str {
        match self {
            TenantRole::Admin => "admin",
            TenantRole::Edit => "edit",
            TenantRole::View => "view",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub subject: Subject,
    pub role: TenantRole,
}

#[derive(Debug, Clone)]
pub struct Backups {
    pub schedule: String,
    pub randomized_delay: String,
    pub retention: Retention,
    /// Recipients as written (validated to parse as age X25519 or SSH recipients).
    pub recipients: Vec<String>,
    pub dir: String,
    pub target: Option<BackupTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub count: Option<u32>,
    pub max_age_days: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct BackupTarget {
    /// The inventory name of the target host (it has the `backup-target` role).
    pub host: String,
    pub path: String,
    /// The account that receives the copies on the target (created by `apply`).
    pub user: String,
    /// The target's SSH host keys that the members pin: its `ssh.hostKey`
    /// when pinned, else filled in from the admin's known_hosts before
    /// rendering (see `remote::ssh::fill_target_host_keys`).
    pub host_keys: Vec<String>,
    pub retention: Retention,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(service: &str) -> Cluster {
        Cluster {
            name: "t".into(),
            version: KubeVersion {
                major: 1,
                minor: 34,
                patch: None,
            },
            api_endpoint: Endpoint {
                host: "10.0.0.1".into(),
                port: 6443,
            },
            service_cidr: Ranges::single(service.parse().unwrap()),
            pod_cidr: Ranges::single("10.244.0.0/16".parse().unwrap()),
            domain: "cluster.local".into(),
            node_network: None,
        }
    }

    /// With `serviceCidr: fd00:96::/108` the apiserver certificate once
    /// carried `fd00:96::` and kubelets `clusterDNS: fd00:96::9`.
    #[test]
    fn service_addresses_are_network_plus_one_and_plus_ten_in_both_families() {
        let v6 = cluster("fd00:96::/108");
        assert_eq!(
            v6.kubernetes_service_ip(),
            "fd00:96::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(v6.dns_service_ip(), "fd00:96::a".parse::<IpAddr>().unwrap());
        let v4 = cluster("10.96.0.0/12");
        assert_eq!(
            v4.kubernetes_service_ip(),
            "10.96.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(v4.dns_service_ip(), "10.96.0.10".parse::<IpAddr>().unwrap());
    }
}
