//! Everything that can go wrong in the PKI, naming the certificate or file involved.

use std::path::PathBuf;

/// A PKI failure. Messages name the certificate or file and end with a hint.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot issue {name} for {days} days: its end would be past the year 9999; lower security.caValidityDays/leafValidityDays")]
    Validity { name: String, days: u32 },
    #[error("cannot generate a key for {name}")]
    KeyGen {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot encode the SSH key {name}: {reason}")]
    SshKey { name: String, reason: String },
    #[error("cannot sign {name}")]
    Sign {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{name}: stored key in {} is not a usable private key; restore it from a backup", path.display())]
    BadKey {
        name: String,
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{name}: {} is not a valid PEM certificate ({reason}); restore it from a backup", path.display())]
    BadCert {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{name}: certificate does not chain to {ca} ({reason}); the CA was replaced or the file tampered with. Restore the state dir from a backup, or remove {name}'s files deliberately to reissue it")]
    BrokenChain {
        name: String,
        ca: String,
        reason: String,
    },
    #[error("{name}: the CA expired on {not_after}; a CA is never replaced behind the admin's back: rotate CAs before they expire (`rampart rotate ca`, docs/rotation.md)")]
    CaExpired { name: String, not_after: String },
    #[error("{name}: the CA's certificate and key in the state dir do not belong together; restore the state dir from a backup")]
    CaKeyMismatch { name: String },
    #[error("{name}: {reason}; run `rampart init` to create or update the PKI")]
    NotInitialised { name: String, reason: String },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot seal {}", path.display())]
    Seal {
        path: PathBuf,
        #[source]
        source: Box<age::EncryptError>,
    },
    #[error("cannot unseal {}; is this the right identity or passphrase?", path.display())]
    Unseal {
        path: PathBuf,
        #[source]
        source: Box<age::DecryptError>,
    },
    #[error("{}: the state key is sealed to {sealed_to}, but {given} was given; unlock with {sealed_to}", path.display())]
    WrongUnlock {
        path: PathBuf,
        sealed_to: &'static str,
        given: &'static str,
    },
    #[error("cannot read age identity file {}; give an `age-keygen` identity with --identity", path.display())]
    Identity { path: PathBuf, reason: String },
    #[error("{} is not a valid state file ({reason}); restore the state dir from a backup", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write kubeconfig for {user}: {reason}")]
    Kubeconfig { user: String, reason: String },
    #[error("rotating {what}: {reason}")]
    Rotation { what: &'static str, reason: String },
    #[error("certs renew: {reason}")]
    Renew { reason: String },
    #[error("user `{user}` is not a member of any tenant in the inventory; add it under tenants[].members[].user")]
    UnknownUser { user: String },
    #[error("user `{user}` is in {count} tenants, but a client certificate can carry at most 2 tenant groups; split the user")]
    TooManyGroups { user: String, count: usize },
}
