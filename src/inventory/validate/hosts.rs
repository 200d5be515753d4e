//! The `hosts` list: names, addresses, roles, extra SANs, node labels, and the
//! cluster topology they add up to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use super::{is_dns_label, is_dns_name, ssh, LocalFiles, Problems};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// Label keys in the kubernetes.io / k8s.io namespaces that a kubelet may set on
/// its own node (kubelet `--node-labels`, NodeRestriction); any other key there
/// makes the kubelet refuse to start.
const KUBELET_ALLOWED_KEYS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.kubernetes.io/zone",
    "failure-domain.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];
/// Label prefixes (namespaces) a kubelet may set under kubernetes.io.
const KUBELET_ALLOWED_PREFIXES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

pub(super) fn hosts(
    raw: &RawInventory,
    base: &Path,
    files: &dyn LocalFiles,
    p: &mut Problems,
) -> Vec<Host> {
    ssh::check_block(&raw.ssh, "ssh", base, files, p);
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut seen_addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, h) in raw.hosts.iter().enumerate() {
        let at = format!("hosts[{i}]");
        if !is_dns_label(&h.name) {
            p.error(
                format!("{at}.name"),
                format!(
                    "`{}` is not a valid host name: use lowercase letters, digits and '-' (at most 63)",
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
        let address = address(&h.address, &format!("{at}.address"), p);
        if let Some(a) = address {
            if let Some(first) = seen_addrs.insert(a, i) {
                p.error(
                    format!("{at}.address"),
                    format!("duplicate address {a} (also hosts[{first}])"),
                );
            }
        }
        let roles = roles(&h.roles, &at, p);
        if let Some(over) = &h.ssh {
            ssh::check_block(over, &format!("{at}.ssh"), base, files, p);
        }
        let ssh = ssh::target(&raw.ssh, h.ssh.as_ref(), base, &at, p);
        let extra_sans = extra_sans(&h.extra_sans, &at, p);
        labels(&h.labels, &at, p);
        if !h.labels.is_empty() && !roles.runs_kubelet() && !roles_unknown(&h.roles) {
            p.warning(
                format!("{at}.labels"),
                format!(
                    "`{}` runs no kubelet (etcd only), so its labels are never applied",
                    h.name
                ),
            );
        }
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

fn roles_unknown(raw: &[String]) -> bool {
    raw.iter().any(|r| {
        !matches!(
            r.as_str(),
            "etcd" | "control-plane" | "worker" | "backup-target"
        )
    })
}

fn address(s: &str, at: &str, p: &mut Problems) -> Option<IpAddr> {
    let Ok(a) = s.parse::<IpAddr>() else {
        p.error(
            at,
            format!("`{s}` is not an IP address (host names are not resolved: give the node's IP)"),
        );
        return None;
    };
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    if a.is_unspecified() || a.is_multicast() || broadcast {
        p.error(
            at,
            format!("{a} cannot be a node address: give the host's own unicast IP"),
        );
        return None;
    }
    if let IpAddr::V6(v6) = a {
        if let Some(v4) = v6.to_ipv4_mapped() {
            p.error(
                at,
                format!("{a} is an IPv4 address written as IPv6: write it as {v4}"),
            );
            return None;
        }
    }
    if a.is_loopback() {
        p.warning(
            at,
            format!("{a} is a loopback address: other hosts and pods cannot reach this node by it"),
        );
    }
    Some(a)
}

fn roles(raw: &[String], at: &str, p: &mut Problems) -> Roles {
    let mut roles = Roles::default();
    if raw.is_empty() {
        p.error(
            format!("{at}.roles"),
            "no roles: give one or more of etcd, control-plane, worker, backup-target",
        );
    }
    let mut seen = HashSet::new();
    for (j, r) in raw.iter().enumerate() {
        if !seen.insert(r.as_str()) {
            p.warning(
                format!("{at}.roles[{j}]"),
                format!("role `{r}` is listed twice"),
            );
            continue;
        }
        match r.as_str() {
            "etcd" => roles.etcd = true,
            "control-plane" => roles.control_plane = true,
            "worker" => roles.worker = true,
            "backup-target" => roles.backup_target = true,
            "master" => p.error(
                format!("{at}.roles[{j}]"),
                "unknown role `master`: it is called `control-plane`",
            ),
            other => p.error(
                format!("{at}.roles[{j}]"),
                format!("unknown role `{other}` (expected etcd, control-plane, worker or backup-target)"),
            ),
        }
    }
    roles
}

fn extra_sans(raw: &[String], at: &str, p: &mut Problems) -> Vec<San> {
    let mut seen = BTreeSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(j, s)| {
            let path = format!("{at}.extraSans[{j}]");
            let san = San::parse(s);
            if let San::Dns(d) = &san {
                if !is_dns_name(d.strip_prefix("*.").unwrap_or(d)) {
                    p.error(
                        path,
                        format!("`{s}` is neither an IP address nor a DNS name (a wildcard may only lead: *.example.org)"),
                    );
                    return None;
                }
            }
            if !seen.insert(san.clone()) {
                p.warning(path, format!("`{s}` is listed twice"));
                return None;
            }
            Some(san)
        })
        .collect()
}

/// Kubernetes label syntax, plus the kubelet's restrictions on its own labels.
fn labels(raw: &BTreeMap<String, String>, at: &str, p: &mut Problems) {
    for (key, value) in raw {
        let path = format!("{at}.labels.{key}");
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if prefix
            .is_some_and(|pre| !is_dns_name(pre) || pre.bytes().any(|c| c.is_ascii_uppercase()))
        {
            p.error(
                &path,
                format!("label key `{key}`: the prefix must be a lowercase DNS subdomain (e.g. example.com/rack)"),
            );
            continue;
        }
        if !is_label_name(name) {
            p.error(
                &path,
                format!("label key `{key}`: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
            continue;
        }
        if !value.is_empty() && !is_label_name(value) {
            p.error(
                &path,
                format!("label value `{value}` must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
        }
        if let Some(pre) = prefix {
            let restricted = pre == "kubernetes.io"
                || pre.ends_with(".kubernetes.io")
                || pre == "k8s.io"
                || pre.ends_with(".k8s.io");
            let allowed = KUBELET_ALLOWED_KEYS.contains(&key.as_str())
                || KUBELET_ALLOWED_PREFIXES
                    .iter()
                    .any(|a| pre == *a || pre.ends_with(&format!(".{a}")));
            if restricted && !allowed {
                p.error(
                    &path,
                    format!("a kubelet may not set `{key}` on its own node (NodeRestriction); apply it with kubectl label after the node joined, or use your own prefix"),
                );
            }
        }
    }
}

fn is_label_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Counted on the raw roles so that a host with a bad address still counts.
pub(super) fn topology(raw: &[RawHost], p: &mut Problems) {
    let count = |role: &str| {
        raw.iter()
            .filter(|h| h.roles.iter().any(|r| r == role))
            .count()
    };
    let (etcd, cps, workers) = (count("etcd"), count("control-plane"), count("worker"));
    if cps == 0 {
        p.error(
            "hosts",
            "no host has the control-plane role: give at least one host `control-plane`",
        );
    }
    if etcd == 0 {
        p.error(
            "hosts",
            "no host has the etcd role: give one, three or five hosts `etcd`",
        );
    } else if etcd % 2 == 0 {
        p.warning(
            "hosts",
            format!(
                "{etcd} etcd members: an even count tolerates no more failures than {} would; use an odd count",
                etcd - 1
            ),
        );
    } else if etcd > 7 {
        p.warning(
            "hosts",
            format!("{etcd} etcd members slow down every write; 3 or 5 is the usual choice"),
        );
    }
    if workers == 0 && cps > 0 {
        p.warning(
            "hosts",
            "no host has the worker role: control-plane nodes are tainted, so workloads have nowhere to run",
        );
    }
}
