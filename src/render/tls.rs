//! Per-component spelling of the inventory's TLS cipher suites.
//!
//! The inventory lists IANA names as Kubernetes spells them. Two components need
//! a different view of the same list:
//! - etcd: TLS 1.3 suites are not configurable in Go, so they are dropped rather
//!   than passed as no-ops.
//! - kubelet: CIS 4.2.12 only accepts the legacy Go names for ChaCha20
//!   (`…_CHACHA20_POLY1305`, which Kubernetes still accepts), and no TLS 1.3 names.

/// TLS 1.3 suites: fixed by Go, listed only so Kubernetes' flag accepts them.
fn is_tls13(suite: &str) -> bool {
    suite.starts_with("TLS_AES_") || suite.starts_with("TLS_CHACHA20_")
}

/// The suites for kube-apiserver, controller-manager and scheduler: as given.
pub fn kube(suites: &[String]) -> String {
    suites.join(",")
}

/// The suites for etcd's `--cipher-suites`.
pub fn etcd(suites: &[String]) -> String {
    suites
        .iter()
        .filter(|s| !is_tls13(s))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// The suites for the kubelet's `tlsCipherSuites`.
pub fn kubelet(suites: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(suites.len());
    for s in suites.iter().filter(|s| !is_tls13(s)) {
        let name = s
            .strip_suffix("_CHACHA20_POLY1305_SHA256")
            .map(|prefix| format!("{prefix}_CHACHA20_POLY1305"))
            .unwrap_or_else(|| s.clone());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubelet_uses_the_names_cis_accepts_and_no_tls13_suites() {
        let got = kubelet(&v(&[
            "TLS_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ]));
        assert_eq!(
            got,
            v(&[
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
            ])
        );
    }

    #[test]
    fn etcd_drops_tls13_suites() {
        assert_eq!(
            etcd(&v(&[
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ])),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }
}
