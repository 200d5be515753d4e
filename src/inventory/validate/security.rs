//! The `security` section: certificate lifetimes, encryption at rest, audit log
//! rotation (CIS 1.2.17–1.2.19 minimums), TLS and Pod Security.

use super::{is_dns_label, Problems};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// Default Kubernetes TLS cipher suites: AEAD with forward secrecy only (CIS 1.2.29, 4.2.12).
pub const DEFAULT_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// CIS minimums for the apiserver's audit log rotation: (field, default = minimum).
const AUDIT_MINIMUMS: [(&str, u32); 3] =
    [("maxAgeDays", 30), ("maxBackups", 10), ("maxSizeMb", 100)];

pub(super) fn security(s: &RawSecurity, p: &mut Problems) -> Security {
    let ca_validity_days = s.ca_validity_days.unwrap_or(3650);
    let leaf_validity_days = s.leaf_validity_days.unwrap_or(365);
    lifetimes(ca_validity_days, leaf_validity_days, p);
    let service_account_token_max_hours = s
        .service_account_token_max_hours
        .unwrap_or(DEFAULT_TOKEN_MAX_HOURS);
    if !(1..=MAX_TOKEN_MAX_HOURS).contains(&service_account_token_max_hours) {
        p.error(
            "security.serviceAccountTokenMaxHours",
            format!(
                "{service_account_token_max_hours} hours is not between 1 (the apiserver's minimum) and {MAX_TOKEN_MAX_HOURS} (a year: a service-account key rotation waits this long before it drops the old key)"
            ),
        );
    }
    if s.encryption_provider == Some(EncryptionProvider::Aesgcm) {
        p.warning(
            "security.encryptionProvider",
            "aesgcm is not among CIS's recommended providers and needs a key rotation every 200k writes; prefer secretbox",
        );
    }
    let a = s.audit_log.clone().unwrap_or_default();
    let audit_log = AuditLog {
        max_age_days: a.max_age_days.unwrap_or(AUDIT_MINIMUMS[0].1),
        max_backups: a.max_backups.unwrap_or(AUDIT_MINIMUMS[1].1),
        max_size_mb: a.max_size_mb.unwrap_or(AUDIT_MINIMUMS[2].1),
    };
    let values = [
        audit_log.max_age_days,
        audit_log.max_backups,
        audit_log.max_size_mb,
    ];
    for ((field, min), value) in AUDIT_MINIMUMS.into_iter().zip(values) {
        if value < min {
            p.error(
                format!("security.auditLog.{field}"),
                format!("{value} is below the CIS minimum of {min}; use {min} or more"),
            );
        }
    }
    Security {
        key_algorithm: s.key_algorithm.unwrap_or_default(),
        ca_validity_days,
        leaf_validity_days,
        service_account_token_max_hours,
        encryption_provider: s.encryption_provider.unwrap_or_default(),
        audit_log,
        tls: tls(s.tls.clone().unwrap_or_default(), p),
        pod_security: pod_security(s.pod_security.clone().unwrap_or_default(), p),
    }
}

/// A day: kubelets refresh their pods' projected tokens hourly, and a
/// service-account key rotation waits this long before dropping the old key.
pub const DEFAULT_TOKEN_MAX_HOURS: u32 = 24;
/// A year: beyond it a token is a long-lived credential, and a key rotation
/// would have to wait that long.
pub const MAX_TOKEN_MAX_HOURS: u32 = 8760;

/// 100 years: the longest lifetime rampart issues. Far beyond any sane CA,
/// and far from where a date stops being representable (X.509 ends in 9999).
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

fn lifetimes(ca: u32, leaf: u32, p: &mut Problems) {
    for (field, days) in [("caValidityDays", ca), ("leafValidityDays", leaf)] {
        if days == 0 {
            p.error(
                format!("security.{field}"),
                "a certificate must be valid for at least one day",
            );
        }
        if days > MAX_VALIDITY_DAYS {
            p.error(
                format!("security.{field}"),
                format!("{days} days is more than rampart issues certificates for ({MAX_VALIDITY_DAYS} days, 100 years)"),
            );
        }
    }
    if ca > 3650 {
        p.warning(
            "security.caValidityDays",
            format!("{ca} days is longer than the recommended 10 years (3650)"),
        );
    }
    if leaf > 365 {
        p.warning(
            "security.leafValidityDays",
            format!("{leaf} days is longer than the recommended 1 year (365)"),
        );
    }
    if leaf > ca {
        p.error(
            "security.leafValidityDays",
            format!("{leaf} days is longer than the CA's lifetime (security.caValidityDays: {ca})"),
        );
    }
}

fn tls(t: RawTls, p: &mut Problems) -> Tls {
    let min_version = match t.min_version.as_deref() {
        None | Some("VersionTLS12") => TlsVersion::Tls12,
        Some("VersionTLS13") => TlsVersion::Tls13,
        Some(other) => {
            p.error(
                "security.tls.minVersion",
                format!(
                    "`{other}` is not VersionTLS12 or VersionTLS13 (older versions are insecure)"
                ),
            );
            TlsVersion::Tls12
        }
    };
    if min_version == TlsVersion::Tls13 && t.cipher_suites.is_some() {
        p.warning(
            "security.tls.cipherSuites",
            "ignored with VersionTLS13: TLS 1.3 suites are not configurable in Kubernetes",
        );
    }
    if t.cipher_suites.as_ref().is_some_and(Vec::is_empty) {
        p.error(
            "security.tls.cipherSuites",
            "an empty list lets Go pick any suite, including weak ones; remove the field for the defaults",
        );
    }
    let cipher_suites = t.cipher_suites.unwrap_or_else(|| {
        DEFAULT_CIPHER_SUITES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for (i, c) in cipher_suites.iter().enumerate() {
        // TLS 1.3 names are accepted by Kubernetes (and ignored by Go): harmless.
        let tls13 = matches!(
            c.as_str(),
            "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256"
        );
        if !DEFAULT_CIPHER_SUITES.contains(&c.as_str()) && !tls13 {
            p.error(
                format!("security.tls.cipherSuites[{i}]"),
                format!(
                    "`{c}` is not a strong cipher suite (allowed: {})",
                    DEFAULT_CIPHER_SUITES.join(", ")
                ),
            );
        }
    }
    // What Go's TLS 1.2 (etcd, the kubelet, and every component's TLS 1.2
    // clients) needs from the list, whatever minVersion says.
    let tls12: Vec<&String> = cipher_suites
        .iter()
        .filter(|c| DEFAULT_CIPHER_SUITES.contains(&c.as_str()))
        .collect();
    if !cipher_suites.is_empty() && tls12.is_empty() {
        p.error(
            "security.tls.cipherSuites",
            "only TLS 1.3 suites: etcd's and the kubelet's lists would be empty, which lets Go pick any TLS 1.2 suite; add TLS 1.2 suites (or remove the field for the defaults)",
        );
    } else if !tls12.is_empty()
        && !tls12
            .iter()
            .any(|c| c.ends_with("_WITH_AES_128_GCM_SHA256"))
    {
        p.error(
            "security.tls.cipherSuites",
            "no ECDHE AES-128-GCM suite: HTTP/2 requires TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, and etcd refuses to start without it (\"http2: TLSConfig.CipherSuites is missing an HTTP/2-required AES_128_GCM_SHA256 cipher\")",
        );
    }
    Tls {
        min_version,
        cipher_suites,
    }
}

fn pod_security(ps: RawPodSecurity, p: &mut Problems) -> PodSecurity {
    let level = match ps.level.as_deref() {
        None | Some("restricted") => PodSecurityLevel::Restricted,
        Some("baseline") => PodSecurityLevel::Baseline,
        Some("privileged") => {
            p.warning(
                "security.podSecurity.level",
                "privileged enforces nothing: pods may run as root with host access; use restricted or baseline",
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
    let exempt_namespaces = ps
        .exempt_namespaces
        .unwrap_or_else(|| vec!["kube-system".into()]);
    for (i, ns) in exempt_namespaces.iter().enumerate() {
        if !is_dns_label(ns) {
            p.error(
                format!("security.podSecurity.exemptNamespaces[{i}]"),
                format!("`{ns}` is not a valid namespace name"),
            );
        }
    }
    PodSecurity {
        level,
        exempt_namespaces,
    }
}
