//! A cluster network: one CIDR, or two of different IP families (dual-stack).
//!
//! Kubernetes takes dual-stack ranges as one comma-separated flag value,
//! primary family first (`--service-cluster-ip-range=10.96.0.0/12,fd00:96::/108`);
//! the inventory writes them the same way, as RKE2 and k3s do. The primary
//! range decides the family of single-stack Services, the `kubernetes`
//! Service's ClusterIP and cluster DNS.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// One range, or a primary and a secondary range of the other family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    primary: IpNet,
    secondary: Option<IpNet>,
}

impl Ranges {
    /// A single-stack network.
    pub fn single(net: IpNet) -> Self {
        Ranges {
            primary: net,
            secondary: None,
        }
    }

    /// A dual-stack network; `None` when both ranges are of one family
    /// (Kubernetes allows at most one range per family).
    pub fn dual(primary: IpNet, secondary: IpNet) -> Option<Self> {
        (primary.addr().is_ipv4() != secondary.addr().is_ipv4()).then_some(Ranges {
            primary,
            secondary: Some(secondary),
        })
    }

    pub fn primary(&self) -> IpNet {
        self.primary
    }

    pub fn is_dual_stack(&self) -> bool {
        self.secondary.is_some()
    }

    /// Primary first, as the flags take them.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> {
        std::iter::once(self.primary).chain(self.secondary)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.iter().any(|net| net.contains(ip))
    }

    pub fn has_ipv6(&self) -> bool {
        self.iter().any(|net| net.addr().is_ipv6())
    }

    /// Both are single-stack of one family, or both dual-stack with the same
    /// family first: the controller-manager and the apiserver need their
    /// pod and service ranges to agree.
    pub fn same_families(&self, other: &Ranges) -> bool {
        let families = |r: &Ranges| r.iter().map(|n| n.addr().is_ipv4()).collect::<Vec<_>>();
        families(self) == families(other)
    }
}

/// The flag form: `10.96.0.0/12` or `10.96.0.0/12,fd00:96::/108`.
impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.primary)?;
        if let Some(s) = self.secondary {
            write!(f, ",{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_dual_stack_pair_needs_both_families_and_prints_as_the_flag_takes_it() {
        assert!(Ranges::dual(net("10.0.0.0/8"), net("192.168.0.0/16")).is_none());
        assert!(Ranges::dual(net("fd00::/108"), net("fd01::/108")).is_none());
        let r = Ranges::dual(net("10.96.0.0/12"), net("fd00:96::/108")).unwrap();
        assert_eq!(r.to_string(), "10.96.0.0/12,fd00:96::/108");
        assert!(r.contains(&"fd00:96::5".parse().unwrap()));
        assert!(r.has_ipv6() && r.is_dual_stack());
        assert_eq!(
            Ranges::single(net("10.96.0.0/12")).to_string(),
            "10.96.0.0/12"
        );
    }

    #[test]
    fn families_agree_only_in_the_same_order() {
        let v4 = Ranges::single(net("10.96.0.0/12"));
        let v4v6 = Ranges::dual(net("10.96.0.0/12"), net("fd00:96::/108")).unwrap();
        let v6v4 = Ranges::dual(net("fd00:96::/108"), net("10.96.0.0/12")).unwrap();
        assert!(v4v6.same_families(&v4v6));
        assert!(!v4.same_families(&v4v6));
        assert!(!v4v6.same_families(&v6v4));
    }
}
