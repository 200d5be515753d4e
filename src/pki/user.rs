//! Kubeconfigs for tenant users: a fresh client certificate per call, signed by the
//! cluster CA, handed to the admin and never stored.

use time::OffsetDateTime;

use crate::inventory::{Inventory, Subject};
use crate::secret::Secret;

use super::catalogue::{CertSpec, Usage};
use super::issue::{Policy, Signer, MAX_ORGANIZATIONS};
use super::kubeconfig::kubeconfig;
use super::store::{StateDir, Unlock};
use super::{names, PkiError};

/// The group a tenant's users carry in their certificates (`O=`). Prefixed so it
/// can never collide with a group an admin names in the inventory.
pub fn tenant_group(namespace: &str) -> String {
    format!("rampart:tenant:{namespace}")
}

/// A kubeconfig for `user`, who must be a `tenants[].members[].user`: CN is the user,
/// O the [`tenant_group`] of every tenant they belong to.
pub fn user_kubeconfig(
    inv: &Inventory,
    dir: &StateDir,
    unlock: &Unlock,
    user: &str,
    now: OffsetDateTime,
) -> Result<Secret, PkiError> {
    let mut groups: Vec<String> = inv
        .tenants
        .iter()
        .filter(|t| {
            t.members
                .iter()
                .any(|m| matches!(&m.subject, Subject::User(u) if u == user))
        })
        .map(|t| tenant_group(&t.namespace))
        .collect();
    groups.sort();
    if groups.is_empty() {
        return Err(PkiError::UnknownUser { user: user.into() });
    }
    if groups.len() > MAX_ORGANIZATIONS {
        return Err(PkiError::TooManyGroups {
            user: user.into(),
            count: groups.len(),
        });
    }
    let key = dir.unlock(unlock)?;
    // Mid-rotation: signed by the CA that signs now, trusting both.
    let ca = super::rotation::read_ca(dir, &key, names::CA)?;
    let view = super::rotation::view(dir, &key, names::CA, ca)?;
    let signer = Signer::new(names::CA, &view.signer)?;
    let spec = CertSpec {
        name: format!("user-{user}"),
        description: format!("tenant user {user}"),
        ca: Some(names::CA.into()),
        common_name: user.into(),
        organizations: groups,
        usage: Usage::Client,
        sans: vec![],
    };
    let policy = Policy::of(inv, now);
    let issued = signer.sign(&spec, &policy)?;
    Ok(kubeconfig(
        &inv.cluster.name,
        &inv.cluster.server_url(),
        &view.trust(),
        user,
        &issued,
    ))
}
