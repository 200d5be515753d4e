//! Rendering: inventory + PKI → per-host [`Bundle`] of hardened configuration files.
//!
//! Pure: no network, no clock, no disk (templates are compiled into the binary).
//!
//! - `templates`: the embedded tera templates, parsed once per process.
//! - `context`: the typed context each template is rendered with.
//! - `shared`: files identical on every host of a role, rendered once per cluster.
//! - `host`: which files, dirs and services each host gets, by role.
//! - `encryption`: the EncryptionConfiguration, built with serde (kubeconfigs come from `pki`).
//! - `tls`: how each component spells the cipher-suite list.
//! - `systemd`: the one escaping layer for values in unit files.

mod backup_units;
mod backups;
mod builder;
mod bundle;
mod context;
mod encryption;
mod host;
pub mod scan;
mod shared;
pub mod systemd;
pub(crate) mod templates;
pub use backup_units::units as backup_units;
mod tls;

pub(crate) use bundle::octal;
pub use bundle::*;
pub use context::{https_url, secure_port};

use crate::inventory::Inventory;
use crate::pki::Pki;

/// Why a bundle could not be rendered. Each names the template, file or certificate.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template shipped in the binary does not parse: a rampart bug.
    #[error(
        "built-in templates do not parse: {message}; this is a bug in rampart, please report it"
    )]
    TemplateParse { message: String },
    /// A value that cannot be written where it goes (a rampart-made key
    /// that is not one, a name with a control character).
    #[error("cannot write {what} for {host}: {reason}")]
    Unwritable {
        host: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot render template {template}: {message}")]
    Template {
        template: &'static str,
        message: String,
    },
    #[error("cannot serialize {path} for {host}")]
    Yaml {
        host: String,
        path: &'static str,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("the PKI has no certificate `{name}` needed by {host}; the state dir is incomplete or was issued for another inventory")]
    MissingCert { host: String, name: String },
    #[error("the state dir has no backup push key for {member}; run `rampart init` to issue it (backups.target is new)")]
    MissingPushKey { member: String },
    #[error("backups.target `{host}`: its SSH host key is neither pinned (ssh.hostKey) nor in known_hosts, and the etcd members must pin it to copy backups there; check and trust it first: `rampart hosts trust -i INVENTORY --hosts {host}`")]
    TargetHostKeyUnknown { host: String },
}

/// Renders every host's bundle. Files that are the same on many hosts are
/// rendered once and copied, so a 1,000-node inventory stays fast.
pub fn render(inv: &Inventory, pki: &Pki) -> Result<Bundle, RenderError> {
    let shared = shared::Shared::new(inv, pki)?;
    let mut bundle = Bundle::default();
    for h in &inv.hosts {
        let hb = host::host_bundle(inv, pki, &shared, h)?;
        bundle.hosts.insert(h.name.clone(), hb);
    }
    Ok(bundle)
}

mod read;
pub use read::{read_bundle, ReadBundleError};
