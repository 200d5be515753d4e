//! The service-account and encryption-at-rest keys as the apiservers use
//! them at each stage of their rotation (see [`super::rotation`] for the
//! stages): which key signs or encrypts, and which others still verify or
//! decrypt.

use crate::secret::Secret;

use super::rotation::{
    bundle, encryption_name, files, missing_next, next_name, roles, rotation, Rotated, Which,
    ENCRYPTION_KEY, SERVICE_ACCOUNT,
};
use super::store::{StateDir, StateKey};
use super::{EncryptionKey, PkiError};

/// The service-account key pair as the apiservers use it at its rotation's
/// stage: the signing key, and every public key that verifies tokens
/// (signer's first). `current` is what `sa.key.age`/`sa.pub` hold.
pub(super) fn service_account_view(
    dir: &StateDir,
    key: &StateKey,
    current: (Secret, String),
) -> Result<(Secret, String), PkiError> {
    let (signer, other) = roles(rotation(dir, SERVICE_ACCOUNT)?.map(|r| r.stage));
    let next = match (signer, other) {
        (Which::Next, _) | (_, Some(Which::Next)) => Some(read_next_service_account(dir, key)?),
        _ => None,
    };
    let pick = |w: Which| match w {
        Which::Current => current.clone(),
        Which::Next => next.clone().expect("read above"),
    };
    let (private, public) = pick(signer);
    let verify = bundle(&public, other.map(|w| pick(w).1).as_deref());
    Ok((private, verify))
}

/// The names of the encryption-at-rest keys in the EncryptionConfiguration
/// at the key's rotation's stage: the one that encrypts first, then the one
/// that only decrypts (no unlock needed: names are not secret).
pub fn encryption_names(dir: &StateDir) -> Result<Vec<String>, PkiError> {
    let (writer, other) = roles(rotation(dir, ENCRYPTION_KEY)?.map(|r| r.stage));
    std::iter::once(writer)
        .chain(other)
        .map(|w| encryption_name(dir, matches!(w, Which::Next)))
        .collect()
}

/// The encryption-at-rest keys as the apiservers use them at the key's
/// rotation's stage, named as [`encryption_names`] lists them. `current`
/// is what `encryption-key.age` holds.
pub(super) fn encryption_view(
    dir: &StateDir,
    key: &StateKey,
    current: Secret,
) -> Result<Vec<EncryptionKey>, PkiError> {
    let (writer, other) = roles(rotation(dir, ENCRYPTION_KEY)?.map(|r| r.stage));
    let names = encryption_names(dir)?;
    let next = || -> Result<Secret, PkiError> {
        let [public, sealed] = files(dir, Rotated::EncryptionKey, true);
        dir.read_sealed(&sealed, key)?
            .ok_or_else(|| missing_next(public, "key", "encryption-key"))
    };
    std::iter::once(writer)
        .chain(other)
        .zip(names)
        .map(|(w, name)| {
            Ok(EncryptionKey {
                name,
                key: match w {
                    Which::Current => current.clone(),
                    Which::Next => next()?,
                },
            })
        })
        .collect()
}

fn read_next_service_account(dir: &StateDir, key: &StateKey) -> Result<(Secret, String), PkiError> {
    let name = next_name(SERVICE_ACCOUNT);
    let public = dir.public_key_path(&name);
    match (
        dir.read_sealed(&dir.key_path(&name), key)?,
        dir.read_public(&public)?,
    ) {
        (Some(private), Some(pem)) => Ok((private, String::from_utf8_lossy(&pem).into_owned())),
        _ => Err(missing_next(public, "key", "service-account-key")),
    }
}

/// The public halves of the service-account keys a rotation's dropping
/// step removes from `sa.pub`: the old key at `drop-old`, the new one at
/// `rolled-back`. (No unlock needed.)
pub fn service_account_public(dir: &StateDir, next: bool) -> Result<Option<String>, PkiError> {
    let path = if next {
        dir.public_key_path(&next_name(SERVICE_ACCOUNT))
    } else {
        dir.sa_pub_path()
    };
    Ok(dir
        .read_public(&path)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}
