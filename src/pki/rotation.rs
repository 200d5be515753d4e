//! CA rotation and leaf renewal in the state dir.
//!
//! A CA is replaced with an overlap, in stages a rotation runbook moves the
//! state dir through, one rollout to the hosts after each:
//!
//! | stage       | signs leaves | hosts trust  |
//! | ----------- | ------------ | ------------ |
//! | (none)      | old          | old          |
//! | `add-new`   | old          | old + new    |
//! | `reissue`   | new          | new + old    |
//! | `drop-old`  | new          | new          |
//! | `done`      | new (moved over the old files) | new |
//!
//! The new CA lives beside the old one (`<ca>.next.crt`, `<ca>.next.key.age`)
//! and the stage in `<ca>.rotation.json` until `done`, so the state dir keeps
//! the old CA until the last stage, and a rollback can walk back one stage at
//! a time: `reissue` → `add-new` reissues the leaves under the old CA again,
//! `add-new` → `rolled-back` forgets the new one. Every transition is one
//! [`StateDir::write_all`] transaction (the leaves and the stage together),
//! so a crash leaves the state dir at one stage or the next, never between.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::Inventory;

use super::catalogue::{catalogue, CertSpec};
use super::inspect::CertFacts;
use super::issue::{self, Policy, Signer};
use super::store::{Pending, StateDir, StateKey, Unlock};
use super::{names, Issued, PkiError};

/// The three CAs rampart keeps, by what they are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Authority {
    /// The cluster CA: apiserver, kubelets, controllers, admins.
    Kubernetes,
    /// etcd's CA: members, peers and their clients.
    Etcd,
    /// The aggregation layer's CA.
    FrontProxy,
}

impl Authority {
    /// Its catalogue name (see [`names`]).
    pub fn cert_name(self) -> &'static str {
        match self {
            Authority::Kubernetes => names::CA,
            Authority::Etcd => names::ETCD_CA,
            Authority::FrontProxy => names::FRONT_PROXY_CA,
        }
    }
    /// How `--ca` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Kubernetes => "kubernetes",
            Authority::Etcd => "etcd",
            Authority::FrontProxy => "front-proxy",
        }
    }
}

/// Where a CA rotation stands in the state dir (see the module doc).
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

/// `<ca>.rotation.json`: which rotation, its stage, and the furthest
/// forward stage it reached (what a rollback has to undo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub id: String,
    pub stage: Stage,
    pub furthest: Stage,
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
        let mut pem = self.signer.cert_pem.clone();
        if let Some(other) = &self.other {
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(other);
        }
        pem
    }
}

/// The rotation of CA `ca` recorded in the state dir, if any.
pub fn rotation(dir: &StateDir, ca: &str) -> Result<Option<Rotation>, PkiError> {
    let path = dir.rotation_path(ca);
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

/// The CA `ca` as it signs and is trusted at its rotation's stage;
/// `current` is what `<ca>.crt`/`.key.age` hold.
pub(super) fn view(
    dir: &StateDir,
    key: &StateKey,
    ca: &str,
    current: Issued,
) -> Result<CaView, PkiError> {
    let stage = rotation(dir, ca)?.map(|r| r.stage);
    let next = || read_next(dir, key, ca);
    Ok(match stage {
        Some(Stage::AddNew) => CaView {
            other: Some(next()?.cert_pem),
            signer: current,
        },
        Some(Stage::Reissue) => CaView {
            signer: next()?,
            other: Some(current.cert_pem),
        },
        Some(Stage::DropOld) => CaView {
            signer: next()?,
            other: None,
        },
        _ => CaView {
            signer: current,
            other: None,
        },
    })
}

fn read_next(dir: &StateDir, key: &StateKey, ca: &str) -> Result<Issued, PkiError> {
    let name = next_name(ca);
    match (
        dir.read_cert(&name)?,
        dir.read_sealed(&dir.key_path(&name), key)?,
    ) {
        (Some(cert_pem), Some(key_pem)) => Ok(Issued { cert_pem, key_pem }),
        _ => Err(PkiError::Corrupt {
            path: dir.cert_path(&name),
            reason: format!(
                "the rotation of {ca} needs its new CA, which is missing; roll the rotation back (`rampart rotate ca --rollback ID`)"
            ),
        }),
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

/// The state-dir name of the new CA during a rotation of `ca`.
pub fn next_name(ca: &str) -> String {
    format!("{ca}.next")
}

/// What a stage transition did: the leaves it reissued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: Option<Stage>,
    pub to: Stage,
    pub reissued: Vec<String>,
}

/// Moves the rotation `id` of `authority` to stage `to`: one step forward
/// or back (see the module doc); already there is a no-op. Refuses a jump,
/// and any move while another rotation of the same CA is under way.
pub fn advance(
    inv: &Inventory,
    dir: &StateDir,
    unlock: &Unlock,
    authority: Authority,
    id: &str,
    to: Stage,
    now: OffsetDateTime,
) -> Result<Transition, PkiError> {
    let ca = authority.cert_name();
    let key = dir.unlock(unlock)?;
    let have = rotation(dir, ca)?;
    let from = have.as_ref().map(|r| r.stage);
    let refuse = |reason: String| PkiError::Rotation {
        ca: authority.as_str(),
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
        path: dir.rotation_path(ca),
        bytes: serde_json::to_vec_pretty(&Rotation {
            id: id.to_string(),
            stage,
            furthest: if stage.in_progress() { furthest } else { stage },
        })
        .expect("a rotation serializes"),
    };
    let policy = Policy::of(inv, now);
    let current = || read_ca(dir, &key, ca);
    let this_run = |stage: Stage| same && from == Some(stage);
    let mut pending = Vec::new();
    match to {
        // Forward from nothing (a fresh rotation), or back from `reissue`.
        Stage::AddNew if !have.as_ref().is_some_and(|r| r.stage.in_progress()) => {
            let spec = catalogue(inv)
                .into_iter()
                .find(|s| s.name == ca)
                .expect("every CA is in the catalogue");
            let issued = issue::self_signed_ca(&spec, &policy)?;
            pending.extend(dir.issued_files(&key, &next_name(ca), &issued)?);
        }
        Stage::AddNew if this_run(Stage::Reissue) => {
            t.reissued = reissue(inv, dir, &key, ca, &current()?, &policy, &mut pending)?;
        }
        Stage::Reissue if this_run(Stage::AddNew) => {
            let next = read_next(dir, &key, ca)?;
            t.reissued = reissue(inv, dir, &key, ca, &next, &policy, &mut pending)?;
        }
        Stage::Reissue if this_run(Stage::DropOld) => {}
        Stage::DropOld if this_run(Stage::Reissue) => {}
        Stage::Done if this_run(Stage::DropOld) => {
            // The new CA takes the old one's files; the sealed key moves as is.
            let next = next_name(ca);
            let sealed = dir
                .read_public(&dir.key_path(&next))?
                .ok_or_else(|| refuse("the new CA's key is missing".into()))?;
            pending.push(Pending {
                path: dir.key_path(ca),
                bytes: sealed,
            });
            pending.push(Pending {
                path: dir.cert_path(ca),
                bytes: read_next(dir, &key, ca)?.cert_pem.into_bytes(),
            });
        }
        Stage::RolledBack if this_run(Stage::AddNew) => {}
        // A rollback of a run that never got as far as its first stage.
        Stage::RolledBack if !same => return Ok(t),
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
        let next = next_name(ca);
        for path in [dir.cert_path(&next), dir.key_path(&next)] {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(t)
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
fn sign_into(
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

/// Which leaves `certs renew` reissues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These catalogue names.
    Names(Vec<String>),
    /// Every leaf that expires within this many days of now.
    ExpiringWithin(u32),
    /// Every leaf.
    All,
}

/// The leaves `selection` picks, in catalogue order, with each one's
/// current expiry; unknown names and CAs are refused.
pub fn select(
    inv: &Inventory,
    dir: &StateDir,
    selection: &Selection,
    now: OffsetDateTime,
) -> Result<Vec<(String, Option<OffsetDateTime>)>, PkiError> {
    let specs = catalogue(inv);
    if let Selection::Names(names) = selection {
        for n in names {
            match specs.iter().find(|s| &s.name == n) {
                None => {
                    return Err(PkiError::Renew {
                        reason: format!("no certificate named `{n}` (see `rampart certs list`)"),
                    })
                }
                Some(s) if s.is_ca() => {
                    return Err(PkiError::Renew {
                        reason: format!("`{n}` is a CA; rotate it with `rampart rotate ca`"),
                    })
                }
                Some(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    for s in specs.iter().filter(|s| !s.is_ca()) {
        let not_after = dir
            .read_cert(&s.name)?
            .and_then(|pem| CertFacts::parse(&s.name, &pem).ok())
            .map(|f| f.not_after);
        let pick = match selection {
            Selection::Names(names) => names.contains(&s.name),
            Selection::All => true,
            Selection::ExpiringWithin(days) => {
                not_after.is_none_or(|t| t <= now + time::Duration::days(i64::from(*days)))
            }
        };
        if pick {
            out.push((s.name.clone(), not_after));
        }
    }
    Ok(out)
}

/// Reissues the named leaves with fresh keys under the CA that signs now
/// (mid-rotation: the new one), in one state-dir transaction. The caller
/// rolls them out.
pub fn renew(
    inv: &Inventory,
    dir: &StateDir,
    unlock: &Unlock,
    leaves: &[String],
    now: OffsetDateTime,
) -> Result<Vec<String>, PkiError> {
    let key = dir.unlock(unlock)?;
    let policy = Policy::of(inv, now);
    let specs = catalogue(inv);
    let mut by_ca: BTreeMap<&str, Vec<CertSpec>> = BTreeMap::new();
    for s in specs.iter().filter(|s| leaves.contains(&s.name)) {
        if let Some(ca) = s.ca.as_deref() {
            by_ca.entry(ca).or_default().push(s.clone());
        }
    }
    let mut pending = Vec::new();
    let mut done = Vec::new();
    for (ca, specs) in by_ca {
        let signer = view(dir, &key, ca, read_ca(dir, &key, ca)?)?.signer;
        done.extend(sign_into(
            dir,
            &key,
            ca,
            &signer,
            &specs,
            &policy,
            &mut pending,
        )?);
    }
    dir.write_all(pending)?;
    Ok(done)
}
