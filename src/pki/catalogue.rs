//! The certificate catalogue: one value per certificate the inventory needs.
//!
//! Like kubeadm's `certlist.go`, issuance, listing, expiry checks and renewal all
//! walk this one table. Everything here is pure: the SANs of a certificate are a
//! function of the inventory, never of a shared mutable global.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::inventory::{Host, Inventory, San};

use super::names;

/// What a leaf certificate may be used for (its extended key usages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    /// A CA: keyCertSign + cRLSign, no EKU.
    Ca,
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
    /// Both (etcd members talk to each other in both directions).
    ServerAndClient,
}

impl Usage {
    pub fn server(self) -> bool {
        matches!(self, Usage::Server | Usage::ServerAndClient)
    }
    pub fn client(self) -> bool {
        matches!(self, Usage::Client | Usage::ServerAndClient)
    }
}

/// One certificate of the cluster, as the inventory wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Catalogue name (see [`names`]); also the file base name in the state dir.
    pub name: String,
    /// What the certificate is for, for `rampart pki list` and error messages.
    pub description: String,
    /// The signing CA's catalogue name; `None` for a (self-signed) CA.
    pub ca: Option<String>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub usage: Usage,
    /// Subject alternative names, deduplicated, in a stable order.
    pub sans: Vec<San>,
}

impl CertSpec {
    pub fn is_ca(&self) -> bool {
        self.ca.is_none()
    }
}

/// Every certificate the inventory needs: CAs first, then their leaves.
pub fn catalogue(inv: &Inventory) -> Vec<CertSpec> {
    let mut out = vec![
        ca(names::CA, "Kubernetes cluster CA", "kubernetes"),
        ca(names::ETCD_CA, "etcd CA", "etcd-ca"),
        ca(
            names::FRONT_PROXY_CA,
            "front proxy (aggregation layer) CA",
            "front-proxy-ca",
        ),
        CertSpec {
            sans: apiserver_sans(inv),
            ..leaf(
                names::APISERVER,
                "apiserver serving certificate",
                names::CA,
                "kube-apiserver",
                &[],
                Usage::Server,
            )
        },
        // kubeadm ≥ 1.29 moved this out of system:masters into a group bound to
        // cluster-admin by RBAC, so it can be revoked by editing a binding.
        leaf(
            names::APISERVER_KUBELET_CLIENT,
            "apiserver client certificate for kubelets",
            names::CA,
            "kube-apiserver-kubelet-client",
            &["kubeadm:cluster-admins"],
            Usage::Client,
        ),
        leaf(
            names::APISERVER_ETCD_CLIENT,
            "apiserver client certificate for etcd",
            names::ETCD_CA,
            "kube-apiserver-etcd-client",
            &[],
            Usage::Client,
        ),
        leaf(
            names::FRONT_PROXY_CLIENT,
            "apiserver client certificate for the front proxy",
            names::FRONT_PROXY_CA,
            "front-proxy-client",
            &[],
            Usage::Client,
        ),
        leaf(
            names::ETCD_HEALTHCHECK_CLIENT,
            "client certificate for etcd health checks",
            names::ETCD_CA,
            "kube-etcd-healthcheck-client",
            &[],
            Usage::Client,
        ),
    ];
    for m in inv.etcd_members() {
        let sans = etcd_member_sans(m);
        out.push(CertSpec {
            sans: sans.clone(),
            ..leaf(
                &names::etcd_server(&m.name),
                &format!("etcd serving certificate of {}", m.name),
                names::ETCD_CA,
                &m.name,
                &[],
                Usage::ServerAndClient,
            )
        });
        out.push(CertSpec {
            sans,
            ..leaf(
                &names::etcd_peer(&m.name),
                &format!("etcd peer certificate of {}", m.name),
                names::ETCD_CA,
                &m.name,
                &[],
                Usage::ServerAndClient,
            )
        });
    }
    out.extend([
        leaf(
            names::CONTROLLER_MANAGER,
            "controller-manager client certificate",
            names::CA,
            "system:kube-controller-manager",
            &[],
            Usage::Client,
        ),
        leaf(
            names::SCHEDULER,
            "scheduler client certificate",
            names::CA,
            "system:kube-scheduler",
            &[],
            Usage::Client,
        ),
        leaf(
            names::KUBE_PROXY,
            "kube-proxy client certificate",
            names::CA,
            "system:kube-proxy",
            &[],
            Usage::Client,
        ),
    ]);
    for n in inv.nodes() {
        let node_user = format!("system:node:{}", n.name);
        out.push(leaf(
            &names::kubelet_client(&n.name),
            &format!("kubelet client certificate of {}", n.name),
            names::CA,
            &node_user,
            &["system:nodes"],
            Usage::Client,
        ));
        out.push(CertSpec {
            sans: kubelet_serving_sans(n),
            ..leaf(
                &names::kubelet_serving(&n.name),
                &format!("kubelet serving certificate of {}", n.name),
                names::CA,
                &node_user,
                &["system:nodes"],
                Usage::Server,
            )
        });
    }
    out.extend([
        // Not system:masters: RBAC binds kubeadm:cluster-admins to cluster-admin, so this
        // identity can be cut off without re-keying the cluster.
        leaf(
            names::ADMIN,
            "cluster administrator client certificate (admin.conf)",
            names::CA,
            "kubernetes-admin",
            &["kubeadm:cluster-admins"],
            Usage::Client,
        ),
        // The break-glass identity that bypasses RBAC; it never leaves the state dir.
        leaf(
            names::SUPER_ADMIN,
            "break-glass client certificate (system:masters, state dir only)",
            names::CA,
            "kubernetes-super-admin",
            &["system:masters"],
            Usage::Client,
        ),
    ]);
    out
}

fn ca(name: &str, description: &str, cn: &str) -> CertSpec {
    CertSpec {
        name: name.into(),
        description: description.into(),
        ca: None,
        common_name: cn.into(),
        organizations: vec![],
        usage: Usage::Ca,
        sans: vec![],
    }
}

fn leaf(
    name: &str,
    description: &str,
    ca: &str,
    cn: &str,
    orgs: &[&str],
    usage: Usage,
) -> CertSpec {
    CertSpec {
        name: name.into(),
        description: description.into(),
        ca: Some(ca.into()),
        common_name: cn.into(),
        organizations: orgs.iter().map(|o| o.to_string()).collect(),
        usage,
        sans: vec![],
    }
}

/// The apiserver is reached by in-cluster clients through the `kubernetes` Service,
/// by kubelets and admins through the API endpoint, and by each control-plane host
/// (and its local components) directly.
pub fn apiserver_sans(inv: &Inventory) -> Vec<San> {
    let c = &inv.cluster;
    let mut sans = vec![
        San::Dns("kubernetes".into()),
        San::Dns("kubernetes.default".into()),
        San::Dns("kubernetes.default.svc".into()),
        San::Dns(format!("kubernetes.default.svc.{}", c.domain)),
        San::Ip(c.kubernetes_service_ip()),
        San::parse(&c.api_endpoint.host),
    ];
    for h in inv.control_planes() {
        sans.push(San::Dns(h.name.clone()));
        sans.push(San::Ip(h.address));
        sans.extend(h.extra_sans.iter().cloned());
    }
    sans.extend(loopback_sans(false));
    dedup(sans)
}

/// etcd members are dialled by name, address and (for local clients) loopback.
pub fn etcd_member_sans(m: &Host) -> Vec<San> {
    let mut sans = vec![San::Dns(m.name.clone()), San::Ip(m.address)];
    sans.extend(loopback_sans(true));
    dedup(sans)
}

/// The apiserver dials kubelets by the node's name or address.
pub fn kubelet_serving_sans(n: &Host) -> Vec<San> {
    let mut sans = vec![San::Dns(n.name.clone()), San::Ip(n.address)];
    sans.extend(n.extra_sans.iter().cloned());
    dedup(sans)
}

fn loopback_sans(with_v6: bool) -> Vec<San> {
    let mut v = vec![
        San::Dns("localhost".into()),
        San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    if with_v6 {
        v.push(San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }
    v
}

/// Keeps the first occurrence of each SAN, so the order stays readable.
fn dedup(sans: Vec<San>) -> Vec<San> {
    let mut seen = std::collections::BTreeSet::new();
    sans.into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    pub(crate) const HA: &str = r#"
cluster:
  name: prod
  kubernetesVersion: "1.34"
  apiEndpoint: api.example.com:6443
hosts:
  - {name: cp1, address: 10.0.0.11, roles: [etcd, control-plane], extraSans: [cp1.example.com]}
  - {name: cp2, address: 10.0.0.12, roles: [etcd, control-plane]}
  - {name: cp3, address: 10.0.0.13, roles: [etcd, control-plane]}
  - {name: w1, address: 10.0.0.21, roles: [worker]}
"#;

    fn ha() -> Inventory {
        crate::inventory::parse(HA, Path::new("inv.yaml"))
            .unwrap()
            .inventory
    }

    fn find<'a>(c: &'a [CertSpec], name: &str) -> &'a CertSpec {
        c.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn every_ca_precedes_its_leaves_and_resolves() {
        let c = catalogue(&ha());
        for (i, spec) in c.iter().enumerate() {
            if let Some(ca) = &spec.ca {
                let pos = c.iter().position(|s| &s.name == ca);
                let pos = pos.unwrap_or_else(|| panic!("{}: CA {ca} not in catalogue", spec.name));
                assert!(pos < i, "{}: CA {ca} comes after it", spec.name);
                assert!(c[pos].is_ca(), "{}: {ca} is not a CA", spec.name);
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let c = catalogue(&ha());
        let names: BTreeSet<_> = c.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), c.len());
    }

    #[test]
    fn per_host_certificates() {
        let c = catalogue(&ha());
        // 3 CAs + 5 fixed leaves + 2 per etcd member + 3 components + 2 per node + 2 admins.
        assert_eq!(c.len(), 3 + 5 + 2 * 3 + 3 + 2 * 4 + 2);
        assert!(c.iter().any(|s| s.name == "kubelet-serving-w1"));
        assert!(!c.iter().any(|s| s.name == "etcd-server-w1"));
    }

    #[test]
    fn apiserver_sans_cover_service_endpoint_and_control_planes() {
        let c = catalogue(&ha());
        let sans: Vec<String> = find(&c, "apiserver")
            .sans
            .iter()
            .map(|s| s.to_string())
            .collect();
        for want in [
            "DNS:kubernetes.default.svc.cluster.local",
            "IP:10.96.0.1",
            "DNS:api.example.com",
            "DNS:cp2",
            "IP:10.0.0.13",
            "DNS:cp1.example.com",
            "DNS:localhost",
            "IP:127.0.0.1",
        ] {
            assert!(
                sans.contains(&want.to_string()),
                "missing {want} in {sans:?}"
            );
        }
        assert!(!sans.contains(&"DNS:w1".to_string()));
    }

    #[test]
    fn identities_follow_kubeadm() {
        let c = catalogue(&ha());
        let admin = find(&c, "admin");
        assert_eq!(admin.organizations, ["kubeadm:cluster-admins"]);
        assert_eq!(find(&c, "super-admin").organizations, ["system:masters"]);
        let k = find(&c, "kubelet-client-cp1");
        assert_eq!(k.common_name, "system:node:cp1");
        assert_eq!(k.organizations, ["system:nodes"]);
        let e = find(&c, "etcd-peer-cp2");
        assert_eq!(e.ca.as_deref(), Some("etcd-ca"));
        assert_eq!(e.usage, Usage::ServerAndClient);
        assert!(e.sans.contains(&San::Ip("::1".parse().unwrap())));
        assert_eq!(
            find(&c, "front-proxy-client").ca.as_deref(),
            Some("front-proxy-ca")
        );
    }
}
