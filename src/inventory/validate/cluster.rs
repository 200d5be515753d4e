//! The `cluster` section: name, version, API endpoint and the three networks.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{is_dns_label, is_dns_name, Problems, SUPPORTED_MINORS};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// The per-node pod range kube-controller-manager carves out of an IPv4 pod CIDR
/// (its default `--node-cidr-mask-size`).
const NODE_CIDR_PREFIX_V4: u8 = 24;
/// The same for an IPv6 pod CIDR.
const NODE_CIDR_PREFIX_V6: u8 = 64;

pub(super) fn cluster(raw: &RawInventory, p: &mut Problems) -> Option<Cluster> {
    let c = &raw.cluster;
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
    let service_cidr = ranges(
        c.service_cidr.as_deref().unwrap_or("10.96.0.0/12"),
        "cluster.serviceCidr",
        p,
    );
    for net in service_cidr.iter().flat_map(Ranges::iter) {
        service_cidr_size(net, p);
    }
    let pod_cidr = ranges(
        c.pod_cidr.as_deref().unwrap_or("10.244.0.0/16"),
        "cluster.podCidr",
        p,
    );
    if let (Some(svc), Some(pod)) = (service_cidr, pod_cidr) {
        if !svc.same_families(&pod) {
            p.error(
                "cluster.podCidr",
                format!("{pod} and cluster.serviceCidr ({svc}) must have the same IP families in the same order: one range of one family each, or both dual-stack with the same family first"),
            );
        }
    }
    if let Some(pod) = pod_cidr {
        let nodes = raw
            .hosts
            .iter()
            .filter(|h| {
                h.roles
                    .iter()
                    .any(|r| r == "control-plane" || r == "worker")
            })
            .count();
        for net in pod.iter() {
            pod_cidr_room(net, nodes, p);
        }
    }
    let node_network = c
        .node_network
        .as_deref()
        .and_then(|n| cidr(n, "cluster.nodeNetwork", p));
    let domain = c
        .cluster_domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    if !is_dns_name(&domain) || domain.ends_with('.') {
        p.error(
            "cluster.clusterDomain",
            format!("`{domain}` is not a valid DNS domain (e.g. cluster.local)"),
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
        // Only reached without an endpoint when another error was reported.
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

pub(super) fn parse_version(s: &str) -> Option<KubeVersion> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts = s.split('.');
    let major = digits(parts.next()?)?;
    let minor = digits(parts.next()?)?;
    let patch = match parts.next() {
        Some(x) => Some(digits(x)?),
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

/// A number written with digits only: `+34`, ` 34` and `0x22` are not
/// versions or ports, whatever `str::parse` accepts.
pub(super) fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What a range that no cluster network may overlap is for.
fn special_range(net: IpNet) -> Option<&'static str> {
    const SPECIAL: [(&str, &str); 11] = [
        ("0.0.0.0/8", "\"this network\" (unspecified)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("2001:db8::/32", "documentation"),
    ];
    SPECIAL.iter().find_map(|(range, what)| {
        let r: IpNet = range.parse().expect("static range");
        (r.contains(&net.network()) || net.contains(&r.network())).then_some(*what)
    })
}

/// One CIDR, or two of different families separated by a comma (dual-stack,
/// primary first, as Kubernetes flags take them).
fn ranges(s: &str, path: &str, p: &mut Problems) -> Option<Ranges> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [one] => cidr(one, path, p).map(Ranges::single),
        [a, b] => {
            let (a, b) = (cidr(a, path, p), cidr(b, path, p));
            let (a, b) = (a?, b?);
            let pair = Ranges::dual(a, b);
            if pair.is_none() {
                let family = if a.addr().is_ipv4() { 4 } else { 6 };
                p.error(
                    path,
                    format!("{a} and {b} are both IPv{family}: a dual-stack network has one IPv4 and one IPv6 range"),
                );
            }
            pair
        }
        _ => {
            p.error(
                path,
                format!(
                    "`{s}` lists {} ranges: give one CIDR, or an IPv4 and an IPv6 one separated by a comma (dual-stack)",
                    parts.len()
                ),
            );
            None
        }
    }
}

fn cidr(s: &str, path: &str, p: &mut Problems) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        if let Some(what) = special_range(net) {
            p.error(
                path,
                format!("{net} is in the {what} range, which packets to and from pods and services cannot use; pick a private range (e.g. 10.96.0.0/12, fd00::/108)"),
            );
            return None;
        }
    }
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

/// kube-apiserver refuses service ranges over 2^20 addresses, and cluster DNS
/// takes the tenth address, so the range must hold at least that many.
fn service_cidr_size(net: IpNet, p: &mut Problems) {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if host_bits > 20 {
        let smallest = net.max_prefix_len() - 20;
        p.error(
            "cluster.serviceCidr",
            format!(
                "{net} is too large: kube-apiserver accepts at most /{smallest} (2^20 addresses)"
            ),
        );
    } else if host_bits < 4 {
        let largest = net.max_prefix_len() - 4;
        p.error(
            "cluster.serviceCidr",
            format!(
                "{net} is too small: cluster DNS takes the tenth address, use /{largest} or larger"
            ),
        );
    }
}

/// Every node gets a /24 of an IPv4 pod CIDR (a /64 of an IPv6 one); make
/// sure there are enough of them, and that the controller-manager accepts
/// the split (its node mask may be at most 16 bits longer than the CIDR's).
fn pod_cidr_room(net: IpNet, nodes: usize, p: &mut Problems) {
    let node_prefix = match net {
        IpNet::V4(_) => NODE_CIDR_PREFIX_V4,
        IpNet::V6(_) => NODE_CIDR_PREFIX_V6,
    };
    let prefix = net.prefix_len();
    if prefix < node_prefix && node_prefix - prefix > 16 {
        p.error(
            "cluster.podCidr",
            format!(
                "{net} is too large: kube-controller-manager splits it into /{node_prefix} per node and refuses more than 16 bits between the two; use a /{} or smaller",
                node_prefix - 16
            ),
        );
        return;
    }
    let room = if prefix > node_prefix {
        0
    } else {
        1usize << (node_prefix - prefix)
    };
    if room < nodes.max(1) {
        // The longest prefix that still holds one node range per node.
        let bits = usize::BITS - (nodes.max(1) - 1).leading_zeros();
        let needed = node_prefix.saturating_sub(bits as u8);
        p.error(
            "cluster.podCidr",
            format!(
                "{net} has room for {room} node(s) at /{node_prefix} each, but {nodes} host(s) run a kubelet; use a /{needed} or larger"
            ),
        );
    }
}

/// `host:port` or `[v6]:port`, each part checked with its own message.
fn endpoint(s: &str, p: &mut Problems) -> Option<Endpoint> {
    const AT: &str = "cluster.apiEndpoint";
    if s.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
        p.error(
            AT,
            format!("`{s}` has no port: write an IPv6 endpoint as [{s}]:6443"),
        );
        return None;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        p.error(
            AT,
            format!("`{s}` has no port: write host:port (e.g. {s}:6443)"),
        );
        return None;
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
        Some(_) => {
            p.error(AT, format!("`{host}` is not an IPv6 address"));
            return None;
        }
        None if host.contains(':') => {
            p.error(
                AT,
                format!("`{s}` is ambiguous: write an IPv6 endpoint as [address]:port"),
            );
            return None;
        }
        None => host,
    };
    let port = match digits::<u16>(port) {
        Some(n) if n != 0 => Some(n),
        _ => {
            p.error(
                AT,
                format!("`{port}` is not a port: use 1-65535 (the apiserver listens on 6443)"),
            );
            None
        }
    };
    let ip = host.parse::<IpAddr>().ok();
    let host_ok = ip.is_some() || is_dns_name(host);
    if !host_ok {
        p.error(
            AT,
            format!("`{host}` is neither an IP address nor a DNS name"),
        );
    }
    let unusable = ip.filter(|ip| {
        ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
    });
    if let Some(ip) = unusable {
        p.error(
            AT,
            format!("{ip} cannot be where nodes and admins reach the API: give the VIP, load balancer or a control plane's own address"),
        );
        return None;
    }
    Some(Endpoint {
        host: host.to_string(),
        port: port?,
    })
    .filter(|_| host_ok)
}

/// The service, pod and node networks must not overlap, and hosts live outside
/// the first two and inside the last.
pub(super) fn networks(c: &Cluster, hosts: &[Host], p: &mut Problems) {
    let mut nets: Vec<(&str, IpNet)> = c
        .service_cidr
        .iter()
        .map(|n| ("cluster.serviceCidr", n))
        .chain(c.pod_cidr.iter().map(|n| ("cluster.podCidr", n)))
        .collect();
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
            } else if matches!(n, IpNet::V4(v4) if v4.prefix_len() < 31
                && (h.address == IpAddr::V4(v4.network()) || h.address == IpAddr::V4(v4.broadcast())))
            {
                p.error(
                    format!("hosts[{i}].address"),
                    format!(
                        "{} is the network or broadcast address of cluster.nodeNetwork ({n}), not a host's",
                        h.address
                    ),
                );
            }
        }
        let primary = c.service_cidr.primary();
        if (h.roles.control_plane || h.roles.runs_kubelet())
            && h.address.is_ipv4() != primary.addr().is_ipv4()
        {
            let (family, wanted) = if h.address.is_ipv4() { (4, 6) } else { (6, 4) };
            p.error(
                format!("hosts[{i}].address"),
                format!(
                    "{} is IPv{family}, but the cluster's primary family is IPv{wanted} (cluster.serviceCidr {primary}): the apiserver advertises and the kubelet registers this address, and Kubernetes wants it in the primary family",
                    h.address
                ),
            );
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

/// An HA endpoint that is one control plane's own address defeats the point of HA,
/// and an endpoint inside a cluster-internal range is unreachable from the hosts.
pub(super) fn endpoint_placement(c: &Cluster, hosts: &[Host], p: &mut Problems) {
    let Ok(ip) = c.api_endpoint.host.parse::<IpAddr>() else {
        return;
    };
    for (name, net) in [("serviceCidr", c.service_cidr), ("podCidr", c.pod_cidr)] {
        if net.contains(&ip) {
            p.error(
                "cluster.apiEndpoint",
                format!(
                    "{ip} is inside cluster.{name} ({net}); use an address on the node network"
                ),
            );
        }
    }
    let cps: Vec<&Host> = hosts.iter().filter(|h| h.roles.control_plane).collect();
    if cps.len() > 1 {
        if let Some(h) = cps.iter().find(|h| h.address == ip) {
            p.warning(
                "cluster.apiEndpoint",
                format!(
                    "{ip} is the address of {} alone: when it is down, nodes lose the API; use a VIP or load balancer",
                    h.name
                ),
            );
        }
    }
}
