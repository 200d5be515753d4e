//! Typed contexts for the templates: one `Serialize` struct per template, built
//! from the inventory. Templates see only these fields, so a typo there is a
//! render error in tests, not a silently empty flag on a host.

use std::net::IpAddr;

use serde::Serialize;

use crate::inventory::{Host, Inventory, Subject, Tenant};

use super::tls;

/// `https://<ip>:<port>`, with brackets for IPv6.
pub fn https_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{port}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
    }
}

/// A string as a YAML or TOML double-quoted scalar (a JSON string is valid in
/// both), so free-form inventory values cannot change the document's structure.
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The port this host's apiserver listens on: the endpoint's port when the
/// endpoint is this host itself (single node, no load balancer), else 6443.
pub fn secure_port(inv: &Inventory, host: &Host) -> u16 {
    let ep = &inv.cluster.api_endpoint;
    let is_local =
        ep.host == host.name || ep.host.parse::<IpAddr>().is_ok_and(|ip| ip == host.address);
    if is_local {
        ep.port
    } else {
        6443
    }
}

#[derive(Serialize)]
pub struct EtcdUnit<'a> {
    pub host: &'a str,
    pub cluster: &'a str,
    pub bin: String,
    pub listen_client_urls: String,
    pub client_url: String,
    pub peer_url: String,
    pub initial_cluster: &'a str,
    pub cipher_suites: &'a str,
}

impl<'a> EtcdUnit<'a> {
    pub fn new(inv: &'a Inventory, host: &'a Host, cluster_wide: &'a EtcdClusterWide) -> Self {
        let client_url = https_url(host.address, 2379);
        let loopback = match host.address {
            IpAddr::V4(_) => "https://127.0.0.1:2379",
            IpAddr::V6(_) => "https://[::1]:2379",
        };
        EtcdUnit {
            host: &host.name,
            cluster: &inv.cluster.name,
            bin: format!("{}/etcd", inv.binaries.etcd_dir.trim_end_matches('/')),
            listen_client_urls: format!("{client_url},{loopback}"),
            client_url,
            peer_url: https_url(host.address, 2380),
            initial_cluster: &cluster_wide.initial_cluster,
            cipher_suites: &cluster_wide.cipher_suites,
        }
    }
}

/// The parts of the etcd flags that are the same on every member.
pub struct EtcdClusterWide {
    /// `name=https://addr:2380,…` over all members.
    pub initial_cluster: String,
    pub cipher_suites: String,
}

impl EtcdClusterWide {
    pub fn new(inv: &Inventory) -> Self {
        EtcdClusterWide {
            initial_cluster: inv
                .etcd_members()
                .map(|m| format!("{}={}", m.name, https_url(m.address, 2380)))
                .collect::<Vec<_>>()
                .join(","),
            cipher_suites: tls::etcd(&inv.security.tls.cipher_suites),
        }
    }
}

fn kube_bin(inv: &Inventory, name: &str) -> String {
    format!("{}/{name}", inv.binaries.dir.trim_end_matches('/'))
}

#[derive(Serialize)]
pub struct ApiserverUnit<'a> {
    pub host: &'a str,
    pub cluster: &'a str,
    pub bin: String,
    pub address: IpAddr,
    pub secure_port: u16,
    pub local_etcd: bool,
    pub etcd_servers: String,
    pub audit_max_age: u32,
    pub audit_max_backup: u32,
    pub audit_max_size: u32,
    pub service_account_issuer: String,
    pub token_max_age: String,
    pub service_cidr: String,
    pub tls_min_version: &'static str,
    pub cipher_suites: String,
}

impl<'a> ApiserverUnit<'a> {
    pub fn new(inv: &'a Inventory, host: &'a Host) -> Self {
        let audit = &inv.security.audit_log;
        ApiserverUnit {
            host: &host.name,
            cluster: &inv.cluster.name,
            bin: kube_bin(inv, "kube-apiserver"),
            address: host.address,
            secure_port: secure_port(inv, host),
            local_etcd: host.roles.etcd,
            etcd_servers: inv
                .etcd_members()
                .map(|m| https_url(m.address, 2379))
                .collect::<Vec<_>>()
                .join(","),
            audit_max_age: audit.max_age_days,
            audit_max_backup: audit.max_backups,
            audit_max_size: audit.max_size_mb,
            service_account_issuer: format!(
                "https://kubernetes.default.svc.{}",
                inv.cluster.domain
            ),
            token_max_age: format!("{}h", inv.security.service_account_token_max_hours),
            service_cidr: inv.cluster.service_cidr.to_string(),
            tls_min_version: inv.security.tls.min_version.kube_name(),
            cipher_suites: tls::kube(&inv.security.tls.cipher_suites),
        }
    }
}

/// Controller-manager and scheduler share their context shape.
#[derive(Serialize)]
pub struct ControlPlaneUnit<'a> {
    pub host: &'a str,
    pub cluster: &'a str,
    pub bin: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub tls_min_version: &'static str,
    pub cipher_suites: String,
}

impl<'a> ControlPlaneUnit<'a> {
    pub fn new(inv: &'a Inventory, host: &'a Host, binary: &str) -> Self {
        ControlPlaneUnit {
            host: &host.name,
            cluster: &inv.cluster.name,
            bin: kube_bin(inv, binary),
            pod_cidr: inv.cluster.pod_cidr.to_string(),
            service_cidr: inv.cluster.service_cidr.to_string(),
            tls_min_version: inv.security.tls.min_version.kube_name(),
            cipher_suites: tls::kube(&inv.security.tls.cipher_suites),
        }
    }
}

/// kubelet and kube-proxy units: only the per-host bits are flags.
#[derive(Serialize)]
pub struct NodeUnit<'a> {
    pub host: &'a str,
    pub cluster: &'a str,
    pub bin: String,
    pub address: IpAddr,
    /// `hosts[].labels` as `--node-labels` takes them (`k=v,k2=v2`; label
    /// syntax has no `,` or `=` in keys or values), empty when none.
    pub labels: String,
    /// `--register-with-taints`: a control plane that is not also a worker
    /// keeps workloads off (kubeadm's taint), empty otherwise.
    pub taints: &'static str,
}

impl<'a> NodeUnit<'a> {
    pub fn new(inv: &'a Inventory, host: &'a Host, binary: &str) -> Self {
        NodeUnit {
            host: &host.name,
            cluster: &inv.cluster.name,
            bin: kube_bin(inv, binary),
            address: host.address,
            labels: host
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            taints: if host.roles.control_plane && !host.roles.worker {
                "node-role.kubernetes.io/control-plane:NoSchedule"
            } else {
                ""
            },
        }
    }
}

#[derive(Serialize)]
pub struct KubeletConfig {
    pub tls_min_version: &'static str,
    pub cipher_suites: Vec<String>,
    pub cluster_domain: String,
    pub cluster_dns: IpAddr,
}

impl KubeletConfig {
    pub fn new(inv: &Inventory) -> Self {
        KubeletConfig {
            tls_min_version: inv.security.tls.min_version.kube_name(),
            cipher_suites: tls::kubelet(&inv.security.tls.cipher_suites),
            cluster_domain: inv.cluster.domain.clone(),
            cluster_dns: inv.cluster.dns_service_ip(),
        }
    }
}

/// containerd's config.toml.
#[derive(Serialize)]
pub struct ContainerdConfig<'a> {
    pub host: &'a str,
    pub cluster: &'a str,
    /// A TOML basic string, quotes included (see [`quoted`]).
    pub sandbox_image: String,
    pub restrict_oom_score_adj: bool,
}

impl<'a> ContainerdConfig<'a> {
    pub fn new(inv: &'a Inventory, host: &'a Host) -> Self {
        ContainerdConfig {
            host: &host.name,
            cluster: &inv.cluster.name,
            sandbox_image: quoted(&inv.runtime.sandbox_image),
            restrict_oom_score_adj: inv.runtime.restrict_oom_score_adj,
        }
    }
}

#[derive(Serialize)]
pub struct KubeletSysctl {
    /// IPv6 pod ranges: the node must forward IPv6 too.
    pub ipv6: bool,
}

#[derive(Serialize)]
pub struct KubeProxyConfig {
    pub pod_cidr: String,
}

#[derive(Serialize)]
pub struct AdmissionConfig<'a> {
    pub pod_security_level: &'static str,
    pub exempt_namespaces: &'a [String],
}

#[derive(Serialize)]
pub struct RbacAddon<'a> {
    pub kubelet_client_user: &'a str,
}

#[derive(Serialize)]
pub struct TenantsAddon {
    pub pod_security_level: &'static str,
    pub tenants: Vec<TenantCtx>,
}

/// One tenant with every free-form value already quoted for YAML.
#[derive(Serialize)]
pub struct TenantCtx {
    pub namespace: String,
    pub quota: QuotaCtx,
    pub limits: LimitsCtx,
    pub allow_dns: bool,
    pub allow_same_namespace: bool,
    pub members: Vec<MemberCtx>,
}

#[derive(Serialize)]
pub struct QuotaCtx {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_cpu: String,
    pub limits_memory: String,
    pub pods: String,
}

#[derive(Serialize)]
pub struct LimitsCtx {
    pub default_cpu: String,
    pub default_memory: String,
    pub default_request_cpu: String,
    pub default_request_memory: String,
    pub max_cpu: String,
    pub max_memory: String,
}

#[derive(Serialize)]
pub struct MemberCtx {
    pub binding_name: String,
    pub role: &'static str,
    pub kind: &'static str,
    pub name: String,
}

impl TenantCtx {
    pub fn new(t: &Tenant) -> Self {
        let q = &t.quota;
        let l = &t.limits;
        TenantCtx {
            namespace: t.namespace.clone(),
            quota: QuotaCtx {
                requests_cpu: quoted(&q.requests_cpu),
                requests_memory: quoted(&q.requests_memory),
                limits_cpu: quoted(&q.limits_cpu),
                limits_memory: quoted(&q.limits_memory),
                pods: quoted(&q.pods.to_string()),
            },
            limits: LimitsCtx {
                default_cpu: quoted(&l.default_cpu),
                default_memory: quoted(&l.default_memory),
                default_request_cpu: quoted(&l.default_request_cpu),
                default_request_memory: quoted(&l.default_request_memory),
                max_cpu: quoted(&l.max_cpu),
                max_memory: quoted(&l.max_memory),
            },
            allow_dns: t.allow_dns,
            allow_same_namespace: t.allow_same_namespace,
            members: t
                .members
                .iter()
                .map(|m| {
                    let (kind, name) = match &m.subject {
                        Subject::User(u) => ("User", u.as_str()),
                        Subject::Group(g) => ("Group", g.as_str()),
                    };
                    let role = m.role.cluster_role();
                    // RBAC names are path segments: anything but '/' and '%'.
                    let safe: String = name
                        .chars()
                        .map(|c| if c == '/' || c == '%' { '-' } else { c })
                        .collect();
                    MemberCtx {
                        binding_name: quoted(&format!(
                            "tenant:{role}:{}:{safe}",
                            kind.to_lowercase()
                        )),
                        role,
                        kind,
                        name: quoted(name),
                    }
                })
                .collect(),
        }
    }
}

/// For templates without variables (tera wants an object, not `()`).
#[derive(Serialize)]
pub struct NoVars {}
