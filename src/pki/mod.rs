//! The cluster PKI: a catalogue of certificates (like kubeadm's), issued with
//! rcgen, kept in the state dir with private material sealed by age.
//!
//! - `catalogue`: the pure table of what the inventory needs (CertSpec per cert).
//! - `issue`: key generation and signing.
//! - `inspect`: reading certificates back (x509-parser), chain and spec checks.
//! - `store`: the state dir on disk (age-sealed keys, 0600/0700).
//! - `init`: the idempotent `init` and the strict `load`; `material`: the
//!   service-account key, encryption key, backup push keys and
//!   super-admin.conf beside the certs.
//! - `list`: the unlock-free listing; `user`: tenant user kubeconfigs.
//! - `kubeconfig`: kubeconfig files with embedded credentials.

pub mod catalogue;
mod error;
mod init;
pub mod inspect;
pub mod issue;
pub mod key_views;
pub mod kubeconfig;
mod list;
mod material;
pub mod names;
pub mod renew;
mod report;
pub mod rotation;
pub mod store;
mod user;

use std::collections::BTreeMap;

use crate::inventory::Inventory;
use crate::secret::Secret;

pub use catalogue::{catalogue, CertSpec, Usage};
pub use error::PkiError;
pub use init::{init, init_with, load};
pub use kubeconfig::kubeconfig;
pub use list::{list, CertInfo, Status, EXPIRY_WARNING};
pub use material::super_admin_kubeconfig;
pub use report::{InitReport, Issuance};
pub use store::{StateDir, Unlock};
pub use user::{tenant_group, user_kubeconfig};

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
    /// By CA name: the PEM bundle hosts trust for it. Outside a rotation the
    /// CA alone; during one, the signing CA then the other (see [`rotation`]).
    pub trust: BTreeMap<String, String>,
    /// The service-account signing key (private, PEM) and its public half (PEM).
    pub service_account_key: Secret,
    pub service_account_pub: String,
    /// The EncryptionConfiguration's keys: the first encrypts, all decrypt
    /// (two during a rotation of the key, see [`rotation`]).
    pub encryption_keys: Vec<EncryptionKey>,
    /// Per etcd member, when backups are copied to a target (else empty).
    pub push_keys: BTreeMap<String, PushKey>,
}

/// An encryption-at-rest key: 32 random bytes, and its name in the
/// EncryptionConfiguration (every value it encrypts carries the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    pub name: String,
    pub key: Secret,
}

/// An etcd member's SSH key for copying backups to the backup target.
#[derive(Debug, Clone)]
pub struct PushKey {
    /// OpenSSH private key: `/etc/rampart/backup-push.key` on the member only.
    pub private: Secret,
    /// `ssh-ed25519 AAAA… rampart-backup-push:<cluster>/<member>`: the target's
    /// `authorized_keys`.
    pub public: String,
}

impl Pki {
    /// The named cert; the catalogue guarantees every name render asks for exists.
    pub fn get(&self, name: &str) -> &Issued {
        self.certs
            .get(name)
            .unwrap_or_else(|| panic!("pki has no `{name}`: catalogue and render disagree"))
    }
    /// What hosts trust for CA `ca`: the bundle, or the CA itself when the
    /// PKI was built without bundles (tests).
    pub fn trust(&self, ca: &str) -> &str {
        self.trust
            .get(ca)
            .map_or_else(|| self.get(ca).cert_pem.as_str(), String::as_str)
    }
    /// The named cert, or None (for callers that probe, e.g. per-host names).
    pub fn try_get(&self, name: &str) -> Option<&Issued> {
        self.certs.get(name)
    }
    /// The service-account signing key (PEM, private): `/etc/kubernetes/pki/sa.key`.
    pub fn service_account_key(&self) -> &Secret {
        &self.service_account_key
    }
    /// The service-account verification key (PEM, public): `/etc/kubernetes/pki/sa.pub`.
    pub fn service_account_pub(&self) -> &str {
        &self.service_account_pub
    }
    /// The 32-byte key that encrypts new writes (raw bytes; base64 it for the file).
    pub fn encryption_key(&self) -> &Secret {
        &self.encryption_keys[0].key
    }
    /// A kubeconfig authenticating as catalogue cert `cert` (user name: its CN, as
    /// kubeadm does), trusting the cluster CA, talking to `server_url`. Render uses
    /// the API endpoint for kubelets and admins, the local apiserver for the
    /// controller-manager and scheduler.
    pub fn kubeconfig(&self, inv: &Inventory, cert: &str, server_url: &str) -> Secret {
        let issued = self.get(cert);
        let user = inspect::CertFacts::parse(cert, &issued.cert_pem)
            .map(|f| f.common_name)
            .unwrap_or_else(|_| cert.to_string());
        kubeconfig(
            &inv.cluster.name,
            server_url,
            self.trust(names::CA),
            &user,
            issued,
        )
    }
}

/// Maps `f` over `items` on every core (std::thread::scope), keeping the order.
/// Key generation, signing and sealing are CPU-bound and independent.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < 16 || threads == 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("pki worker panicked"))
            .collect()
    })
}
