//! Leaf renewal in the state dir (`rampart certs renew`): which leaves to
//! reissue, and reissuing them with fresh keys under the CA that signs now.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::inventory::Inventory;

use super::catalogue::{catalogue, CertSpec};
use super::inspect::CertFacts;
use super::issue::Policy;
use super::rotation::{read_ca, sign_into, view};
use super::store::{StateDir, Unlock};
use super::PkiError;

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
