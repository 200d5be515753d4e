//! Raw inventory → validated [`Inventory`], collecting every problem on the way.
//!
//! Each check pushes a [`Problem`] and carries on; the caller decides what is
//! fatal. Conversion returns `None` only when the result would be unusable.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::model::*;
use super::schema::*;
use super::{Problem, Severity};

/// Default Kubernetes TLS cipher suites: AEAD with forward secrecy only (CIS 1.2.29, 4.2.12).
pub const DEFAULT_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Kubernetes minor versions this release renders for.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 32..=34;

#[derive(Default)]
pub(super) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path, message);
    }
    pub fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }
    fn push(&mut self, severity: Severity, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            severity,
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }
}

/// Validates `raw`; relative paths are resolved against `base` (the inventory's folder).
///
/// Returns the inventory when it could be built at all, and every problem found
/// (errors and warnings). An inventory returned alongside errors must not be used.
pub fn validate(raw: &RawInventory, base: &Path) -> (Option<Inventory>, Vec<Problem>) {
    let mut p = Problems::default();
    let cluster = cluster(&raw.cluster, raw, &mut p);
    let hosts = hosts(raw, base, &mut p);
    check_topology(&hosts, &mut p);
    let security = security(&raw.security, &mut p);
    let tenants = tenants(&raw.tenants, &mut p);
    let binaries = binaries(&raw.binaries, base, &mut p);
    let backups = raw.backups.as_ref().map(|b| backups(b, &mut p));
    if let Some(c) = &cluster {
        check_networks(c, &hosts, &mut p);
    }
    let inventory = cluster.map(|cluster| Inventory {
        cluster,
        hosts,
        binaries,
        security,
        tenants,
        backups,
    });
    (inventory, p.0)
}

fn cluster(c: &RawCluster, raw: &RawInventory, p: &mut Problems) -> Option<Cluster> {
    if !is_dns_label(&c.name) {
        p.error(
            "cluster.name",
            format!(
                "`{}` is not a valid name: use lowercase letters, digits and '-' (at most 63)",
                c.name
            ),
        );
    }
    let version = parse_version(&c.kubernetes_version);
    match version {
        None => p.error(
            "cluster.kubernetesVersion",
            format!(
                "`{}` is not a Kubernetes version (expected e.g. 1.34 or v1.34.1)",
                c.kubernetes_version
            ),
        ),
        Some(v) if v.major != 1 || !SUPPORTED_MINORS.contains(&v.minor) => p.error(
            "cluster.kubernetesVersion",
            format!("unsupported Kubernetes version {v}: rampart supports v1.32 to v1.34"),
        ),
        Some(_) => {}
    }
    let service_cidr = cidr(
        c.service_cidr.as_deref().unwrap_or("10.96.0.0/12"),
        "cluster.serviceCidr",
        p,
    );
    let pod_cidr = cidr(
        c.pod_cidr.as_deref().unwrap_or("10.244.0.0/16"),
        "cluster.podCidr",
        p,
    );
    let node_network = c
        .node_network
        .as_deref()
        .and_then(|n| cidr(n, "cluster.nodeNetwork", p));
    let domain = c
        .cluster_domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    if !is_dns_name(&domain) {
        p.error(
            "cluster.clusterDomain",
            format!("`{domain}` is not a valid DNS domain"),
        );
    }
    let control_planes: Vec<&RawHost> = raw
        .hosts
        .iter()
        .filter(|h| h.roles.iter().any(|r| r == "control-plane"))
        .collect();
    let api_endpoint = match &c.api_endpoint {
        Some(e) => endpoint(e, p),
        None if control_planes.len() > 1 => {
            p.error(
                "cluster.apiEndpoint",
                format!(
                    "required with {} control-plane hosts: give the VIP or load balancer as host:port",
                    control_planes.len()
                ),
            );
            None
        }
        None => control_planes.first().map(|h| Endpoint {
            host: h.address.clone(),
            port: 6443,
        }),
    };
    Some(Cluster {
        name: c.name.clone(),
        version: version?,
        api_endpoint: api_endpoint.unwrap_or(Endpoint {
            host: "127.0.0.1".into(),
            port: 6443,
        }),
        service_cidr: service_cidr?,
        pod_cidr: pod_cidr?,
        domain,
        node_network,
    })
}

fn parse_version(s: &str) -> Option<KubeVersion> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts = s.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = match parts.next() {
        Some(x) => Some(x.parse().ok()?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(KubeVersion {
        major,
        minor,
        patch,
    })
}

fn cidr(s: &str, path: &str, p: &mut Problems) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(net) if net != net.trunc() => {
            p.error(
                path,
                format!("`{s}` has host bits set; did you mean {}?", net.trunc()),
            );
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            p.error(
                path,
                format!("`{s}` is not a CIDR (expected e.g. 10.96.0.0/12)"),
            );
            None
        }
    }
}

fn endpoint(s: &str, p: &mut Problems) -> Option<Endpoint> {
    let parsed = s.rsplit_once(':').and_then(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        (host.parse::<IpAddr>().is_ok() || is_dns_name(host)).then(|| Endpoint {
            host: host.to_string(),
            port,
        })
    });
    if parsed.is_none() {
        p.error(
            "cluster.apiEndpoint",
            format!("`{s}` is not host:port (e.g. k8s-api.example.internal:6443)"),
        );
    }
    parsed
}

fn hosts(raw: &RawInventory, base: &Path, p: &mut Problems) -> Vec<Host> {
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut seen_addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, h) in raw.hosts.iter().enumerate() {
        let at = format!("hosts[{i}]");
        if !is_dns_label(&h.name) {
            p.error(
                format!("{at}.name"),
                format!(
                    "`{}` is not a valid host name: use lowercase letters, digits and '-'",
                    h.name
                ),
            );
        }
        if let Some(first) = seen_names.insert(&h.name, i) {
            p.error(
                format!("{at}.name"),
                format!("duplicate host name `{}` (also hosts[{first}])", h.name),
            );
        }
        let address = match h.address.parse::<IpAddr>() {
            Ok(a) => {
                if let Some(first) = seen_addrs.insert(a, i) {
                    p.error(
                        format!("{at}.address"),
                        format!("duplicate address {a} (also hosts[{first}])"),
                    );
                }
                Some(a)
            }
            Err(_) => {
                p.error(
                    format!("{at}.address"),
                    format!("`{}` is not an IP address", h.address),
                );
                None
            }
        };
        let roles = roles(&h.roles, &at, p);
        let ssh = ssh_target(&raw.ssh, h.ssh.as_ref(), base, &at, p);
        let extra_sans = h
            .extra_sans
            .iter()
            .enumerate()
            .filter_map(|(j, s)| {
                let san = San::parse(s);
                if let San::Dns(d) = &san {
                    if !is_dns_name(d.strip_prefix("*.").unwrap_or(d)) {
                        p.error(
                            format!("{at}.extraSans[{j}]"),
                            format!("`{s}` is neither an IP address nor a DNS name"),
                        );
                        return None;
                    }
                }
                Some(san)
            })
            .collect();
        if let Some(address) = address {
            out.push(Host {
                name: h.name.clone(),
                address,
                roles,
                extra_sans,
                labels: h.labels.clone(),
                ssh,
            });
        }
    }
    out
}

fn roles(raw: &[String], at: &str, p: &mut Problems) -> Roles {
    let mut roles = Roles::default();
    if raw.is_empty() {
        p.error(
            format!("{at}.roles"),
            "no roles: give one or more of etcd, control-plane, worker",
        );
    }
    for (j, r) in raw.iter().enumerate() {
        match r.as_str() {
            "etcd" => roles.etcd = true,
            "control-plane" => roles.control_plane = true,
            "worker" => roles.worker = true,
            other => p.error(
                format!("{at}.roles[{j}]"),
                format!("unknown role `{other}` (expected etcd, control-plane or worker)"),
            ),
        }
    }
    roles
}

fn ssh_target(
    defaults: &RawSsh,
    over: Option<&RawSsh>,
    base: &Path,
    at: &str,
    p: &mut Problems,
) -> SshTarget {
    let empty = RawSsh::default();
    let o = over.unwrap_or(&empty);
    let identity_file = o
        .identity_file
        .as_deref()
        .map(|f| (f, format!("{at}.ssh.identityFile")))
        .or_else(|| {
            defaults
                .identity_file
                .as_deref()
                .map(|f| (f, "ssh.identityFile".to_string()))
        })
        .map(|(f, path)| {
            let resolved = resolve(f, base);
            if let Err(e) = std::fs::File::open(&resolved) {
                p.error(
                    path,
                    format!("cannot read identity file {}: {e}", resolved.display()),
                );
            }
            resolved
        });
    if defaults.host_key.is_some() {
        p.error(
            "ssh.hostKey",
            "a host key is pinned per host (hosts[N].ssh.hostKey), not in the defaults",
        );
    }
    let bastion = o
        .bastion
        .as_ref()
        .or(defaults.bastion.as_ref())
        .map(|b| Bastion {
            address: b.address.clone(),
            port: b.port.unwrap_or(22),
            user: b
                .user
                .clone()
                .or_else(|| defaults.user.clone())
                .unwrap_or_else(|| "root".into()),
            identity_file: b.identity_file.as_deref().map(|f| resolve(f, base)),
            host_key: b.host_key.clone(),
        });
    SshTarget {
        user: o
            .user
            .clone()
            .or_else(|| defaults.user.clone())
            .unwrap_or_else(|| "root".into()),
        port: o.port.or(defaults.port).unwrap_or(22),
        identity_file,
        agent: o.agent.or(defaults.agent).unwrap_or(false),
        become_: o.become_.or(defaults.become_).unwrap_or(Become::None),
        known_hosts_file: o
            .known_hosts_file
            .as_deref()
            .or(defaults.known_hosts_file.as_deref())
            .map(|f| resolve(f, base)),
        bastion,
        host_key: o.host_key.clone(),
    }
}

/// `~/x` → `$HOME/x`; relative → against the inventory's folder.
fn resolve(f: &str, base: &Path) -> PathBuf {
    if let Some(rest) = f.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let path = PathBuf::from(f);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

fn check_topology(hosts: &[Host], p: &mut Problems) {
    let etcd = hosts.iter().filter(|h| h.roles.etcd).count();
    let cps = hosts.iter().filter(|h| h.roles.control_plane).count();
    if cps == 0 {
        p.error("hosts", "no host has the control-plane role");
    }
    if etcd == 0 {
        p.error("hosts", "no host has the etcd role");
    } else if etcd % 2 == 0 {
        p.warning(
            "hosts",
            format!(
                "{etcd} etcd members: an even count tolerates no more failures than {} would",
                etcd - 1
            ),
        );
    }
}

fn check_networks(c: &Cluster, hosts: &[Host], p: &mut Problems) {
    let mut nets = vec![
        ("cluster.serviceCidr", c.service_cidr),
        ("cluster.podCidr", c.pod_cidr),
    ];
    if let Some(n) = c.node_network {
        nets.push(("cluster.nodeNetwork", n));
    }
    for (i, (an, a)) in nets.iter().enumerate() {
        for (bn, b) in &nets[i + 1..] {
            if a.contains(&b.network()) || b.contains(&a.network()) {
                p.error(*bn, format!("{b} overlaps {an} ({a})"));
            }
        }
    }
    for (i, h) in hosts.iter().enumerate() {
        if let Some(n) = c.node_network {
            if !n.contains(&h.address) {
                p.error(
                    format!("hosts[{i}].address"),
                    format!("{} is outside cluster.nodeNetwork ({n})", h.address),
                );
            }
        }
        for (name, net) in [("serviceCidr", c.service_cidr), ("podCidr", c.pod_cidr)] {
            if net.contains(&h.address) {
                p.error(
                    format!("hosts[{i}].address"),
                    format!("{} is inside cluster.{name} ({net})", h.address),
                );
            }
        }
    }
}

fn security(s: &RawSecurity, p: &mut Problems) -> Security {
    let ca_validity_days = s.ca_validity_days.unwrap_or(3650);
    let leaf_validity_days = s.leaf_validity_days.unwrap_or(365);
    if ca_validity_days > 3650 {
        p.warning(
            "security.caValidityDays",
            format!("{ca_validity_days} days is longer than the recommended 10 years"),
        );
    }
    if leaf_validity_days > 365 {
        p.warning(
            "security.leafValidityDays",
            format!("{leaf_validity_days} days is longer than the recommended 1 year"),
        );
    }
    if leaf_validity_days == 0 || ca_validity_days == 0 {
        p.error("security", "certificate lifetimes must be at least one day");
    }
    if leaf_validity_days > ca_validity_days {
        p.error(
            "security.leafValidityDays",
            "longer than the CA's lifetime (security.caValidityDays)",
        );
    }
    let a = s.audit_log.clone().unwrap_or_default();
    let audit_log = AuditLog {
        max_age_days: a.max_age_days.unwrap_or(30),
        max_backups: a.max_backups.unwrap_or(10),
        max_size_mb: a.max_size_mb.unwrap_or(100),
    };
    for (field, value, min) in [
        ("maxAgeDays", audit_log.max_age_days, 30),
        ("maxBackups", audit_log.max_backups, 10),
        ("maxSizeMb", audit_log.max_size_mb, 100),
    ] {
        if value < min {
            p.error(
                format!("security.auditLog.{field}"),
                format!("{value} is below the CIS minimum of {min}"),
            );
        }
    }
    let tls = s.tls.clone().unwrap_or_default();
    let min_version = match tls.min_version.as_deref() {
        None | Some("VersionTLS12") => TlsVersion::Tls12,
        Some("VersionTLS13") => TlsVersion::Tls13,
        Some(other) => {
            p.error(
                "security.tls.minVersion",
                format!("`{other}` is not VersionTLS12 or VersionTLS13"),
            );
            TlsVersion::Tls12
        }
    };
    let cipher_suites = tls.cipher_suites.unwrap_or_else(|| {
        DEFAULT_CIPHER_SUITES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for (i, c) in cipher_suites.iter().enumerate() {
        if !DEFAULT_CIPHER_SUITES.contains(&c.as_str())
            && !c.starts_with("TLS_AES_")
            && !c.starts_with("TLS_CHACHA20_")
        {
            p.error(
                format!("security.tls.cipherSuites[{i}]"),
                format!(
                    "`{c}` is not a strong cipher suite (allowed: {})",
                    DEFAULT_CIPHER_SUITES.join(", ")
                ),
            );
        }
    }
    let ps = s.pod_security.clone().unwrap_or_default();
    let level = match ps.level.as_deref() {
        None | Some("restricted") => PodSecurityLevel::Restricted,
        Some("baseline") => PodSecurityLevel::Baseline,
        Some("privileged") => {
            p.warning(
                "security.podSecurity.level",
                "privileged enforces nothing: pods may run as root with host access",
            );
            PodSecurityLevel::Privileged
        }
        Some(other) => {
            p.error(
                "security.podSecurity.level",
                format!("unknown level `{other}` (expected restricted, baseline or privileged)"),
            );
            PodSecurityLevel::Restricted
        }
    };
    Security {
        key_algorithm: s.key_algorithm.unwrap_or_default(),
        ca_validity_days,
        leaf_validity_days,
        encryption_provider: s.encryption_provider.unwrap_or_default(),
        audit_log,
        tls: Tls {
            min_version,
            cipher_suites,
        },
        pod_security: PodSecurity {
            level,
            exempt_namespaces: ps
                .exempt_namespaces
                .unwrap_or_else(|| vec!["kube-system".into()]),
        },
    }
}

fn tenants(raw: &[RawTenant], p: &mut Problems) -> Vec<Tenant> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    raw.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tenants[{i}]");
            if !is_dns_label(&t.namespace) {
                p.error(
                    format!("{at}.namespace"),
                    format!("`{}` is not a valid namespace name", t.namespace),
                );
            }
            if t.namespace.starts_with("kube-") || t.namespace == "default" {
                p.error(
                    format!("{at}.namespace"),
                    format!("`{}` is a system namespace, not a tenant", t.namespace),
                );
            }
            if let Some(first) = seen.insert(&t.namespace, i) {
                p.error(
                    format!("{at}.namespace"),
                    format!("duplicate tenant `{}` (also tenants[{first}])", t.namespace),
                );
            }
            let q = t.quota.clone().unwrap_or_default();
            let l = t.limits.clone().unwrap_or_default();
            let n = t.network.clone().unwrap_or_default();
            let members = t
                .members
                .iter()
                .enumerate()
                .filter_map(|(j, m)| member(m, &format!("{at}.members[{j}]"), p))
                .collect();
            Tenant {
                namespace: t.namespace.clone(),
                quota: Quota {
                    requests_cpu: q.requests_cpu.unwrap_or_else(|| "4".into()),
                    requests_memory: q.requests_memory.unwrap_or_else(|| "8Gi".into()),
                    limits_cpu: q.limits_cpu.unwrap_or_else(|| "8".into()),
                    limits_memory: q.limits_memory.unwrap_or_else(|| "16Gi".into()),
                    pods: q.pods.unwrap_or(50),
                },
                limits: Limits {
                    default_cpu: l.default_cpu.unwrap_or_else(|| "500m".into()),
                    default_memory: l.default_memory.unwrap_or_else(|| "512Mi".into()),
                    default_request_cpu: l.default_request_cpu.unwrap_or_else(|| "100m".into()),
                    default_request_memory: l
                        .default_request_memory
                        .unwrap_or_else(|| "128Mi".into()),
                    max_cpu: l.max_cpu.unwrap_or_else(|| "2".into()),
                    max_memory: l.max_memory.unwrap_or_else(|| "4Gi".into()),
                },
                allow_dns: n.allow_dns.unwrap_or(true),
                allow_same_namespace: n.allow_same_namespace.unwrap_or(false),
                members,
            }
        })
        .collect()
}

fn member(m: &RawMember, at: &str, p: &mut Problems) -> Option<Member> {
    let role = match m.role.as_str() {
        "admin" => Some(TenantRole::Admin),
        "edit" => Some(TenantRole::Edit),
        "view" => Some(TenantRole::View),
        other => {
            p.error(
                format!("{at}.role"),
                format!("unknown tenant role `{other}` (expected admin, edit or view)"),
            );
            None
        }
    };
    let subject = match (&m.user, &m.group) {
        (Some(u), None) => Some(Subject::User(u.clone())),
        (None, Some(g)) => Some(Subject::Group(g.clone())),
        _ => {
            p.error(at.to_string(), "give exactly one of `user` or `group`");
            None
        }
    };
    if let Some(Subject::Group(g) | Subject::User(g)) = &subject {
        if g.starts_with("system:") {
            p.error(
                at.to_string(),
                format!("`{g}` is reserved for Kubernetes itself"),
            );
        }
    }
    Some(Member {
        subject: subject?,
        role: role?,
    })
}

fn binaries(b: &RawBinaries, base: &Path, p: &mut Problems) -> Binaries {
    for (name, sum) in &b.sha256 {
        if sum.len() != 64 || !sum.bytes().all(|c| c.is_ascii_hexdigit()) {
            p.error(
                format!("binaries.sha256.{name}"),
                "not a sha256 (64 hex digits)",
            );
        }
    }
    let dir = b.dir.clone().unwrap_or_else(|| "/usr/local/bin".into());
    if !dir.starts_with('/') {
        p.error(
            "binaries.dir",
            format!("`{dir}` must be an absolute path on the hosts"),
        );
    }
    Binaries {
        dir,
        etcd_dir: b.etcd_dir.clone().unwrap_or_else(|| "/usr/bin".into()),
        artifacts: b.artifacts.as_deref().map(|a| resolve(a, base)),
        sha256: b.sha256.clone(),
    }
}

fn backups(b: &RawBackups, p: &mut Problems) -> Backups {
    if b.recipients.is_empty() {
        p.error(
            "backups.recipients",
            "at least one age recipient is needed: backups are always encrypted",
        );
    }
    for (i, r) in b.recipients.iter().enumerate() {
        let ok =
            r.parse::<age::x25519::Recipient>().is_ok() || r.parse::<age::ssh::Recipient>().is_ok();
        if !ok {
            p.error(
                format!("backups.recipients[{i}]"),
                "not an age recipient (age1…) or an SSH public key (ssh-ed25519 …, ssh-rsa …)",
            );
        }
    }
    let retention = |r: &Option<RawRetention>, at: &str, p: &mut Problems| {
        let r = r.clone().unwrap_or_default();
        if r.count == Some(0) {
            p.error(format!("{at}.count"), "must keep at least one backup");
        }
        Retention {
            count: r.count.or(if r.max_age_days.is_none() {
                Some(28)
            } else {
                None
            }),
            max_age_days: r.max_age_days,
        }
    };
    Backups {
        schedule: b
            .schedule
            .clone()
            .unwrap_or_else(|| "*-*-* 00/6:00:00".into()),
        randomized_delay: b.randomized_delay.clone().unwrap_or_else(|| "30min".into()),
        retention: retention(&b.retention, "backups.retention", p),
        recipients: b.recipients.clone(),
        dir: b.dir.clone().unwrap_or_else(|| "/var/backups/etcd".into()),
        target: b.target.as_ref().map(|t| BackupTarget {
            host: t.host.clone(),
            path: t.path.clone(),
            retention: retention(&t.retention, "backups.target.retention", p),
        }),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_dns_label(&l.to_ascii_lowercase()))
}
