//! The state dir's material that is not a certificate: the service-account key
//! pair, the encryption-at-rest key, the etcd members' backup push keys and the
//! sealed super-admin.conf. None of the keys is ever regenerated once it
//! exists: that would invalidate every token, make every stored Secret
//! unreadable or lock the members out of the backup target.

use std::collections::BTreeMap;

use rcgen::KeyPair;

use crate::inventory::Inventory;
use crate::secret::Secret;

use super::issue::{self, Policy};
use super::kubeconfig::kubeconfig;
use super::report::Issuance;
use super::store::{Pending, StateDir, StateKey};
use super::{names, EncryptionKey, Pki, PkiError, PushKey};

/// What `init` may do about material that is not in the state dir.
pub(super) enum Missing<'a> {
    /// Issue it and queue its files (a new cluster, or `--replace-lost`).
    Issue(&'a Policy, &'a mut Vec<Pending>),
    /// Refuse: the cluster exists and runs with the lost material (`init`
    /// without `--replace-lost`), or nothing may be written (`load`).
    Refuse(&'static str),
}

/// Reuses the service-account key pair (a new one would invalidate every
/// token; `rampart rotate service-account-key` replaces it with an overlap),
/// as the rotation's stage has the apiservers use it.
pub(super) fn service_account(
    dir: &StateDir,
    key: &StateKey,
    missing: Missing<'_>,
) -> Result<(Secret, String, Issuance), PkiError> {
    let (kp, pubp) = (dir.sa_key_path(), dir.sa_pub_path());
    match (dir.read_sealed(&kp, key)?, dir.read_public(&pubp)?) {
        (Some(private), Some(public)) => {
            let public = String::from_utf8_lossy(&public).into_owned();
            let matches = KeyPair::from_pem(private.expose_str())
                .is_ok_and(|k| k.public_key_pem().trim() == public.trim());
            if !matches {
                return Err(PkiError::Corrupt {
                    path: pubp,
                    reason: "sa.pub is not the public half of sa.key".into(),
                });
            }
            // Mid-rotation the apiservers sign with one key and verify with both.
            let (private, public) =
                super::key_views::service_account_view(dir, key, (private, public))?;
            Ok((private, public, Issuance::Reused))
        }
        (None, None) => {
            let Missing::Issue(policy, pending) = missing else {
                return Err(lost(
                    missing,
                    "sa",
                    "every service-account token in use stops working",
                ));
            };
            let (private, public) = issue::service_account_key(policy.key_algorithm)?;
            pending.push(Pending {
                bytes: key.seal(private.expose(), &kp)?,
                path: kp,
            });
            pending.push(Pending {
                path: pubp,
                bytes: public.clone().into_bytes(),
            });
            Ok((private, public, Issuance::Issued))
        }
        (private, _) => Err(PkiError::Corrupt {
            path: if private.is_some() { pubp } else { kp },
            reason: "the service-account key pair is half there; restore it from a backup".into(),
        }),
    }
}

/// Reuses the encryption-at-rest key (losing it would make every stored
/// Secret unreadable; `rampart rotate encryption-key` replaces it with an
/// overlap), as the rotation's stage has the apiservers use it.
pub(super) fn encryption_key(
    dir: &StateDir,
    key: &StateKey,
    missing: Missing<'_>,
) -> Result<(Vec<EncryptionKey>, Issuance), PkiError> {
    let path = dir.encryption_key_path();
    match dir.read_sealed(&path, key)? {
        Some(k) if k.expose().len() == 32 => Ok((
            super::key_views::encryption_view(dir, key, k)?,
            Issuance::Reused,
        )),
        Some(k) => Err(PkiError::Corrupt {
            path,
            reason: format!("{} bytes, expected 32", k.expose().len()),
        }),
        None => {
            let Missing::Issue(_, pending) = missing else {
                return Err(lost(
                    missing,
                    "encryption-key",
                    "every Secret stored in etcd becomes unreadable",
                ));
            };
            let k = issue::encryption_key();
            pending.push(Pending {
                bytes: key.seal(k.expose(), &path)?,
                path,
            });
            Ok((
                vec![EncryptionKey {
                    name: super::rotation::FIRST_KEY_NAME.into(),
                    key: k,
                }],
                Issuance::Issued,
            ))
        }
    }
}

/// The error for lost material `name`, saying what a new one would break.
fn lost(missing: Missing<'_>, name: &str, breaks: &str) -> PkiError {
    let why = match missing {
        Missing::Refuse(why) => why,
        Missing::Issue(..) => "",
    };
    PkiError::NotInitialised {
        name: name.into(),
        reason: format!(
            "missing from the state dir {why}; a new one would mean {breaks}: restore it from your backup of the state dir, or, if it is lost for good, run `rampart init --replace-lost`"
        ),
    }
}

/// Push keys by member name.
type PushKeys = BTreeMap<String, PushKey>;

/// One SSH key pair per etcd member when backups are copied to a target
/// (`backups.target`): the member logs in to the target with it, and the
/// target's `authorized_keys` ties each key to its member. With `issue` None
/// (`load`), a missing key is an error instead of a new key.
pub(super) fn push_keys(
    inv: &Inventory,
    dir: &StateDir,
    key: &StateKey,
    mut issue: Option<&mut Vec<Pending>>,
) -> Result<(PushKeys, Vec<(String, Issuance)>), PkiError> {
    let mut keys = BTreeMap::new();
    let mut report = Vec::new();
    if inv.backups.as_ref().is_none_or(|b| b.target.is_none()) {
        return Ok((keys, report));
    }
    for m in inv.etcd_members() {
        let name = format!("backup-push/{}", m.name);
        let (kp, pubp) = (dir.push_key_path(&m.name), dir.push_pub_path(&m.name));
        let (pair, action) = match (dir.read_sealed(&kp, key)?, dir.read_public(&pubp)?) {
            (Some(private), Some(public)) => {
                let public = String::from_utf8_lossy(&public).trim().to_string();
                let matches = russh::keys::PrivateKey::from_openssh(private.expose_str())
                    .ok()
                    .and_then(|k| k.public_key().to_openssh().ok())
                    .is_some_and(|p| p == public);
                if !matches {
                    return Err(PkiError::Corrupt {
                        path: pubp,
                        reason: format!("not the public half of {}", kp.display()),
                    });
                }
                (PushKey { private, public }, Issuance::Reused)
            }
            (None, None) => {
                let Some(pending) = issue.as_deref_mut() else {
                    return Err(PkiError::NotInitialised {
                        name,
                        reason: "missing from the state dir (backups.target is new)".into(),
                    });
                };
                let comment = format!("rampart-backup-push:{}/{}", inv.cluster.name, m.name);
                let (private, public) = issue::ssh_push_key(&comment)?;
                pending.push(Pending {
                    bytes: key.seal(private.expose(), &kp)?,
                    path: kp,
                });
                pending.push(Pending {
                    path: pubp,
                    bytes: format!("{public}\n").into_bytes(),
                });
                (PushKey { private, public }, Issuance::Issued)
            }
            (private, _) => {
                return Err(PkiError::Corrupt {
                    path: if private.is_some() { pubp } else { kp },
                    reason:
                        "the push key pair is half there; delete both halves to issue a new one"
                            .into(),
                })
            }
        };
        keys.insert(m.name.clone(), pair);
        report.push((name, action));
    }
    Ok((keys, report))
}

/// super-admin.conf lives only in the state dir; rewritten when its content changes.
/// The super-admin kubeconfig (system:masters): kept sealed in the state
/// dir; `apply` sends it on stdin for the one bootstrap binding, never to disk.
pub fn super_admin_kubeconfig(inv: &Inventory, pki: &Pki) -> Secret {
    kubeconfig(
        &inv.cluster.name,
        &inv.cluster.server_url(),
        pki.trust(names::CA),
        "kubernetes-super-admin",
        pki.get(names::SUPER_ADMIN),
    )
}

pub(super) fn super_admin_conf(
    inv: &Inventory,
    dir: &StateDir,
    key: &StateKey,
    pki: &Pki,
    pending: &mut Vec<Pending>,
) -> Result<(), PkiError> {
    let conf = super_admin_kubeconfig(inv, pki);
    let path = dir.super_admin_conf_path();
    if dir.read_sealed(&path, key)?.as_ref() != Some(&conf) {
        pending.push(Pending {
            bytes: key.seal(conf.expose(), &path)?,
            path,
        });
    }
    Ok(())
}
