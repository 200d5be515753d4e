//! The cluster PKI: a catalogue of certificates (like kubeadm's), issued with
//! rcgen, kept in the state dir with private material sealed by age.
//!
//! - `catalogue`: the pure table of what the inventory needs (CertSpec per cert).
//! - `issue`: key generation and signing.
//! - `store`: the state dir on disk (age-sealed keys, 0600/0700).
//! - `kubeconfig`: kubeconfig files with embedded credentials.

pub mod names;

use std::collections::BTreeMap;

use crate::secret::Secret;

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Secret,
}

/// All PKI material of one cluster, loaded or freshly issued: what `render` consumes.
#[derive(Debug, Clone)]
pub struct Pki {
    /// By catalogue name (see [`names`]): CAs and leaves.
    pub certs: BTreeMap<String, Issued>,
    /// The service-account signing key (private, PEM) and its public half (PEM).
    pub service_account_key: Secret,
    pub service_account_pub: String,
    /// 32 random bytes for the EncryptionConfiguration provider.
    pub encryption_key: Secret,
}

impl Pki {
    /// The named cert; the catalogue guarantees every name render asks for exists.
    pub fn get(&self, name: &str) -> &Issued {
        self.certs
            .get(name)
            .unwrap_or_else(|| panic!("pki has no `{name}`: catalogue and render disagree"))
    }
}
