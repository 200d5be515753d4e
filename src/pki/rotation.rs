//! Rotating a CA or the service-account signing key in the state dir.
//!
//! Either is replaced with an overlap, in stages a rotation runbook moves the
//! state dir through, one rollout to the hosts after each:
//!
//! | stage       | signs (leaves, tokens) | hosts trust (bundle, `sa.pub`) |
//! | ----------- | ---------------------- | ------------------------------ |
//! | (none)      | old                    | old                            |
//! | `add-new`   | old                    | old + new                      |
//! | `reissue`   | new                    | new + old                      |
//! | `drop-old`  | new                    | new                            |
//! | `done`      | new (moved over the old files) | new                    |
//!
//! For a CA, `reissue` also reissues every leaf it signs; for the
//! service-account and encryption keys it only switches the signer (see
//! [`super::key_views`]: tokens age out, Secrets are rewritten by the
//! runbook).
//!
//! The new CA or key lives beside the old one (`<ca>.next.crt` and
//! `<ca>.next.key.age`; `sa.next.key.age` and `sa.next.pub`) and the stage
//! in `<name>.rotation.json` until `done`, so the state dir keeps the old one
//! until the last stage, and a rollback can walk back one stage at a time:
//! `reissue` → `add-new` reissues the leaves under the old CA again,
//! `add-new` → `rolled-back` forgets the new one. Every transition is one
//! [`StateDir::write_all`] transaction (the leaves and the stage together),
//! so a crash leaves the state dir at one stage or the next, never between.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::Inventory;

use super::catalogue::{catalogue, CertSpec};
use super::inspect::CertFacts;
use super::issue::{self, Policy, Signer};
use super::store::{Pending, StateDir, StateKey, Unlock};
use super::{names, Issued, PkiError};

/// What a rotation replaces: one of the three CAs, or the service-account
/// signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rotated {
    /// The cluster CA: apiserver, kubelets, controllers, admins.
    Kubernetes,
    /// etcd's CA: members, peers and their clients.
    Etcd,
    /// The aggregation layer's CA.
    FrontProxy,
    /// The key that signs service-account tokens (`sa.key`, `sa.pub`).
    ServiceAccountKey,
    /// The key that encrypts Secrets at rest (`encryption-key.age`).
    EncryptionKey,
}

/// The service-account key pair's state-dir name (`sa.key.age`, `sa.pub`).
pub const SERVICE_ACCOUNT: &str = "sa";
pub use super::store::ENCRYPTION_KEY;
/// The name of the key `init` generates, in the EncryptionConfiguration.
pub const FIRST_KEY_NAME: &str = "key1";

impl Rotated {
    /// The CA's catalogue name (see [`names`]); None for the service-account key.
    pub fn ca_name(self) -> Option<&'static str> {
        match self {
            Rotated::Kubernetes => Some(names::CA),
            Rotated::Etcd => Some(names::ETCD_CA),
            Rotated::FrontProxy => Some(names::FRONT_PROXY_CA),
            Rotated::ServiceAccountKey | Rotated::EncryptionKey => None,
        }
    }
    /// Its state-dir name: the rotation's record is `pki/<name>.rotation.json`.
    pub fn state_name(self) -> &'static str {
        match self {
            Rotated::ServiceAccountKey => SERVICE_ACCOUNT,
            Rotated::EncryptionKey => ENCRYPTION_KEY,
            ca => ca.ca_name().expect("a CA"),
        }
    }
    /// How `--ca` names a CA (`service-account-key` for the key).
    pub fn as_str(self) -> &'static str {
        match self {
            Rotated::Kubernetes => "kubernetes",
            Rotated::Etcd => "etcd",
            Rotated::FrontProxy => "front-proxy",
            Rotated::ServiceAccountKey => "service-account-key",
            Rotated::EncryptionKey => "encryption-key",
        }
    }
    /// For messages: "the etcd CA", "the service-account key".
    pub fn describe(self) -> &'static str {
        match self {
            Rotated::Kubernetes => "the kubernetes CA",
            Rotated::Etcd => "the etcd CA",
            Rotated::FrontProxy => "the front-proxy CA",
            Rotated::ServiceAccountKey => "the service-account key",
            Rotated::EncryptionKey => "the encryption-at-rest key",
        }
    }
}

/// Where a rotation stands in the state dir (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    AddNew,
    Reissue,
    DropOld,
    Done,
    RolledBack,
}

impl Stage {
    /// A rotation in this stage is still under way (the state dir holds two CAs).
    pub fn in_progress(self) -> bool {
        matches!(self, Stage::AddNew | Stage::Reissue | Stage::DropOld)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::AddNew => "add-new",
            Stage::Reissue => "reissue",
            Stage::DropOld => "drop-old",
            Stage::Done => "done",
            Stage::RolledBack => "rolled-back",
        }
    }
}

/// `<name>.rotation.json`: which rotation, its stage, and the furthest
/// forward stage it reached (what a rollback has to undo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub id: String,
    pub stage: Stage,
    pub furthest: Stage,
    /// When every host carried this stage (unix seconds, the admin
    /// machine's clock); None until its rollout finished. How long the old
    /// service-account key has not signed is counted from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<i64>,
}

/// Which of the two a stage uses for a role.
#[derive(Clone, Copy)]
pub(super) enum Which {
    Current,
    Next,
}

/// What signs at `stage`, and what else hosts trust (the module doc's table).
pub(super) fn roles(stage: Option<Stage>) -> (Which, Option<Which>) {
    match stage {
        Some(Stage::AddNew) => (Which::Current, Some(Which::Next)),
        Some(Stage::Reissue) => (Which::Next, Some(Which::Current)),
        Some(Stage::DropOld) => (Which::Next, None),
        _ => (Which::Current, None),
    }
}

/// `first` then `second`, as one PEM bundle.
pub(super) fn bundle(first: &str, second: Option<&str>) -> String {
    let mut pem = first.to_string();
    if let Some(second) = second {
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(second);
    }
    pem
}

/// A CA as the rest of the PKI sees it during (or outside) a rotation.
pub(super) struct CaView {
    /// The CA that signs leaves now (certificate and key).
    pub signer: Issued,
    /// The other CA the hosts still (or already) trust, if any.
    pub other: Option<String>,
}

impl CaView {
    /// The trust bundle hosts get: the signing CA first, then the other.
    pub fn trust(&self) -> String {
        bundle(&self.signer.cert_pem, self.other.as_deref())
    }
}

/// The rotation recorded in the state dir under `name` (a CA's catalogue
/// name, or [`SERVICE_ACCOUNT`]), if any.
pub fn rotation(dir: &StateDir, name: &str) -> Result<Option<Rotation>, PkiError> {
    let path = dir.rotation_path(name);
    let Some(bytes) = dir.read_public(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PkiError::Corrupt {
            path,
            reason: e.to_string(),
        })
}

/// Records that every host carries rotation `id`'s current stage as of
/// `now` (see [`Rotation::settled_at`]); a no-op for another run's record.
pub fn settle(
    dir: &StateDir,
    what: Rotated,
    id: &str,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let name = what.state_name();
    let Some(mut r) = rotation(dir, name)?.filter(|r| r.id == id) else {
        return Ok(());
    };
    r.settled_at = Some(now.unix_timestamp());
    dir.write_all(vec![Pending {
        path: dir.rotation_path(name),
        bytes: serde_json::to_vec_pretty(&r).expect("a rotation serializes"),
    }])
}

/// The CA `ca` as it signs and is trusted at its rotation's stage;
/// `current` is what `<ca>.crt`/`.key.age` hold.
pub(super) fn view(
    dir: &StateDir,
    key: &StateKey,
    ca: &str,
    current: Issued,
) -> Result<CaView, PkiError> {
    let (signer, other) = roles(rotation(dir, ca)?.map(|r| r.stage));
    let next = match (signer, other) {
        (Which::Next, _) | (_, Some(Which::Next)) => Some(read_next(dir, key, ca)?),
        _ => None,
    };
    let pick = |w: Which| match w {
        Which::Current => current.clone(),
        Which::Next => next.clone().expect("read above"),
    };
    Ok(CaView {
        signer: pick(signer),
        other: other.map(|w| pick(w).cert_pem),
    })
}

fn read_next(dir: &StateDir, key: &StateKey, ca: &str) -> Result<Issued, PkiError> {
    let name = next_name(ca);
    match (
        dir.read_cert(&name)?,
        dir.read_sealed(&dir.key_path(&name), key)?,
    ) {
        (Some(cert_pem), Some(key_pem)) => Ok(Issued { cert_pem, key_pem }),
        _ => Err(missing_next(dir.cert_path(&name), "CA", "ca --ca CA")),
    }
}

pub(super) fn missing_next(path: PathBuf, what: &str, command: &str) -> PkiError {
    PkiError::Corrupt {
        path,
        reason: format!(
            "the rotation needs its new {what}, which is missing; roll the rotation back (`rampart rotate {command} --rollback ID`)"
        ),
    }
}

/// The CA's own files (`<ca>.crt`, `<ca>.key.age`); naming the half
/// that is missing.
pub(super) fn read_ca(dir: &StateDir, key: &StateKey, ca: &str) -> Result<Issued, PkiError> {
    let not_there = |what: &str| PkiError::NotInitialised {
        name: ca.into(),
        reason: format!("the CA's {what} is missing from the state dir"),
    };
    Ok(Issued {
        cert_pem: dir.read_cert(ca)?.ok_or_else(|| not_there("certificate"))?,
        key_pem: dir
            .read_sealed(&dir.key_path(ca), key)?
            .ok_or_else(|| not_there("key"))?,
    })
}

/// The certificate of the CA that signs leaves now (no unlock needed):
/// the new one from stage `reissue` on.
pub fn signer_cert(dir: &StateDir, ca: &str) -> Result<Option<String>, PkiError> {
    match rotation(dir, ca)?.map(|r| r.stage) {
        Some(Stage::Reissue | Stage::DropOld) => dir.read_cert(&next_name(ca)),
        _ => dir.read_cert(ca),
    }
}

/// The name of the current (or, with `next`, the new) encryption key.
pub(super) fn encryption_name(dir: &StateDir, next: bool) -> Result<String, PkiError> {
    let [path, _] = files(dir, Rotated::EncryptionKey, next);
    match dir.read_public(&path)? {
        Some(b) => Ok(String::from_utf8_lossy(&b).trim().to_string()),
        None if !next => Ok(FIRST_KEY_NAME.to_string()),
        None => Err(missing_next(path, "key", "encryption-key")),
    }
}

/// The state-dir name of an encryption key a rotation retired
/// (`pki/encryption-key.retired.<key name>.age`).
pub fn retired_name(key_name: &str) -> String {
    format!("{ENCRYPTION_KEY}.retired.{key_name}")
}

/// The state-dir name of the new CA or key during a rotation of `name`.
pub fn next_name(name: &str) -> String {
    format!("{name}.next")
}

/// The files of `what`'s current (or, with `next`, new) CA or key: the
/// public half (certificate, public key, or the encryption key's name)
/// and the sealed private half.
pub(super) fn files(dir: &StateDir, what: Rotated, next: bool) -> [PathBuf; 2] {
    let name = match next {
        true => next_name(what.state_name()),
        false => what.state_name().to_string(),
    };
    match what {
        Rotated::ServiceAccountKey => [dir.public_key_path(&name), dir.key_path(&name)],
        Rotated::EncryptionKey => [dir.name_path(&name), dir.sealed_path(&name)],
        _ => [dir.cert_path(&name), dir.key_path(&name)],
    }
}

/// What a stage transition did: the leaves it reissued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: Option<Stage>,
    pub to: Stage,
    pub reissued: Vec<String>,
}

/// Moves the rotation `id` of `what` to stage `to`: one step forward or
/// back (see the module doc); already there is a no-op. Refuses a jump,
/// and any move while another rotation of the same CA or key is under way.
pub fn advance(
    inv: &Inventory,
    dir: &StateDir,
    unlock: &Unlock,
    what: Rotated,
    id: &str,
    to: Stage,
    now: OffsetDateTime,
) -> Result<Transition, PkiError> {
    let name = what.state_name();
    let key = dir.unlock(unlock)?;
    let have = rotation(dir, name)?;
    let from = have.as_ref().map(|r| r.stage);
    let refuse = |reason: String| PkiError::Rotation {
        what: what.describe(),
        reason,
    };
    if let Some(r) = &have {
        if r.id != id && r.stage.in_progress() {
            return Err(refuse(format!(
                "rotation {} is at stage {}; resume it (`--resume {}`) or roll it back (`--rollback {}`) first",
                r.id,
                r.stage.as_str(),
                r.id,
                r.id
            )));
        }
    }
    let same = have.as_ref().is_some_and(|r| r.id == id);
    let mut t = Transition {
        from,
        to,
        reissued: Vec::new(),
    };
    if same && from == Some(to) {
        return Ok(t);
    }
    let furthest = match &have {
        Some(r) if same && r.furthest.in_progress() => r.furthest.max(to),
        _ => to,
    };
    let marker = |stage: Stage| Pending {
        path: dir.rotation_path(name),
        bytes: serde_json::to_vec_pretty(&Rotation {
            id: id.to_string(),
            stage,
            furthest: if stage.in_progress() { furthest } else { stage },
            settled_at: None,
        })
        .expect("a rotation serializes"),
    };
    let policy = Policy::of(inv, now);
    let this_run = |stage: Stage| same && from == Some(stage);
    let mut pending = Vec::new();
    match (to, what.ca_name()) {
        // Forward from nothing (a fresh rotation): the new CA or key.
        (Stage::AddNew, _) if !have.as_ref().is_some_and(|r| r.stage.in_progress()) => {
            generate(inv, dir, &key, what, id, &policy, &mut pending)?
        }
        // Back from `reissue`: the leaves again under the old CA.
        (Stage::AddNew, Some(ca)) if this_run(Stage::Reissue) => {
            let current = read_ca(dir, &key, ca)?;
            t.reissued = reissue(inv, dir, &key, ca, &current, &policy, &mut pending)?;
        }
        (Stage::Reissue, Some(ca)) if this_run(Stage::AddNew) => {
            let next = read_next(dir, &key, ca)?;
            t.reissued = reissue(inv, dir, &key, ca, &next, &policy, &mut pending)?;
        }
        // The service-account and encryption keys only switch signers (see `roles`).
        (Stage::AddNew, None) if this_run(Stage::Reissue) => {}
        (Stage::Reissue, None) if this_run(Stage::AddNew) => {}
        (Stage::Reissue, _) if this_run(Stage::DropOld) => {}
        (Stage::DropOld, _) if this_run(Stage::Reissue) => {}
        (Stage::Done, _) if this_run(Stage::DropOld) => {
            // The new CA or key takes the old one's files; sealed keys move as is.
            let [public, sealed] = files(dir, what, true);
            let [old_public, old_sealed] = files(dir, what, false);
            if what == Rotated::EncryptionKey {
                // Backups taken before the rotation hold values only the old
                // key decrypts: it is kept, sealed, under its name.
                let name = encryption_name(dir, false)?;
                let bytes = dir
                    .read_public(&old_sealed)?
                    .ok_or_else(|| refuse("the old encryption key is missing".into()))?;
                pending.push(Pending {
                    path: dir.sealed_path(&retired_name(&name)),
                    bytes,
                });
            }
            for (from, to) in [(sealed, old_sealed), (public, old_public)] {
                let bytes = dir
                    .read_public(&from)?
                    .ok_or_else(|| refuse(format!("{} is missing", from.display())))?;
                pending.push(Pending { path: to, bytes });
            }
        }
        (Stage::RolledBack, _) if this_run(Stage::AddNew) => {}
        // A rollback of a run that never got as far as its first stage.
        (Stage::RolledBack, _) if !same => return Ok(t),
        _ => {
            return Err(refuse(format!(
                "cannot go from {} to {} in rotation {id}",
                from.map_or("no rotation", Stage::as_str),
                to.as_str()
            )))
        }
    }
    pending.push(marker(to));
    dir.write_all(pending)?;
    if matches!(to, Stage::Done | Stage::RolledBack) {
        // No longer read (the stage says so); removed so no stale key lies about.
        for path in files(dir, what, true) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(t)
}

/// The new CA or key of rotation `id`, into `pending`.
fn generate(
    inv: &Inventory,
    dir: &StateDir,
    key: &StateKey,
    what: Rotated,
    id: &str,
    policy: &Policy,
    pending: &mut Vec<Pending>,
) -> Result<(), PkiError> {
    let [public, sealed] = files(dir, what, true);
    let (private, public_bytes) = match what.ca_name() {
        Some(ca) => {
            let spec = catalogue(inv)
                .into_iter()
                .find(|s| s.name == ca)
                .expect("every CA is in the catalogue");
            let issued = issue::self_signed_ca(&spec, policy)?;
            (issued.key_pem, issued.cert_pem.into_bytes())
        }
        None if what == Rotated::ServiceAccountKey => {
            let (private, public) = issue::service_account_key(policy.key_algorithm)?;
            (private, public.into_bytes())
        }
        // A name no earlier key had: values carry it in their prefix.
        None => (issue::encryption_key(), format!("key-{id}").into_bytes()),
    };
    pending.push(Pending {
        bytes: key.seal(private.expose(), &sealed)?,
        path: sealed,
    });
    pending.push(Pending {
        path: public,
        bytes: public_bytes,
    });
    Ok(())
}

/// Reissues, under `signer`, every leaf of CA `ca` it did not sign (fresh
/// keys), into `pending`; returns their names.
fn reissue(
    inv: &Inventory,
    dir: &StateDir,
    key: &StateKey,
    ca: &str,
    signer: &Issued,
    policy: &Policy,
    pending: &mut Vec<Pending>,
) -> Result<Vec<String>, PkiError> {
    let signer_facts = CertFacts::parse(ca, &signer.cert_pem)?;
    let leaves: Vec<CertSpec> = catalogue(inv)
        .into_iter()
        .filter(|s| s.ca.as_deref() == Some(ca))
        .filter(|s| {
            let signed = dir
                .read_cert(&s.name)
                .ok()
                .flatten()
                .and_then(|pem| CertFacts::parse(&s.name, &pem).ok())
                .is_some_and(|f| f.verify_signed_by(&signer_facts).is_ok());
            !signed
        })
        .collect();
    sign_into(dir, key, ca, signer, &leaves, policy, pending)
}

/// Signs `leaves` with `signer` (fresh keys), into `pending`; their names.
pub(super) fn sign_into(
    dir: &StateDir,
    key: &StateKey,
    ca: &str,
    signer: &Issued,
    leaves: &[CertSpec],
    policy: &Policy,
    pending: &mut Vec<Pending>,
) -> Result<Vec<String>, PkiError> {
    let signer = Signer::new(ca, signer)?;
    let fresh = super::par_map(leaves, |spec| {
        let issued = signer.sign(spec, policy)?;
        dir.issued_files(key, &spec.name, &issued)
    });
    for files in fresh {
        pending.extend(files?);
    }
    Ok(leaves.iter().map(|s| s.name.clone()).collect())
}
