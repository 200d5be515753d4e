//! `init` and `load`: walk the catalogue against the state dir.
//!
//! `init` is idempotent: material that still chains, matches its spec and has not
//! expired is reused; missing material is issued; a leaf whose spec changed is
//! reissued alone, with the reason. A leaf that no longer chains to its CA is a
//! hard error, and a CA is never regenerated behind the admin's back.

use std::collections::BTreeMap;

use rcgen::{KeyPair, PublicKeyData};
use time::OffsetDateTime;

use crate::inventory::Inventory;
use crate::secret::Secret;

use super::catalogue::{catalogue, CertSpec};
use super::inspect::CertFacts;
use super::issue::{self, Policy, Signer};
use super::material::{encryption_key, push_keys, service_account, super_admin_conf, Missing};
use super::report::{InitReport, Issuance};
use super::rotation::{self, CaView};
use super::store::{Pending, StateDir, StateKey, Unlock};
use super::{par_map, Issued, Pki, PkiError};

/// A certificate and key as found in the state dir (either may be missing).
struct Stored {
    cert: Option<String>,
    key: Option<Secret>,
}

/// Creates or updates the PKI in `dir` for `inv`; see the module doc.
pub fn init(
    inv: &Inventory,
    dir: &StateDir,
    unlock: &Unlock,
    now: OffsetDateTime,
) -> Result<(Pki, InitReport), PkiError> {
    init_with(inv, dir, unlock, now, false)
}

/// [`init`]; with `replace_lost`, material whose loss breaks a running
/// cluster (the service-account key, the encryption key) is issued anew
/// when it is missing although the cluster's CAs exist. Without it, that is
/// an error: regenerating them silently once made every stored Secret
/// unreadable and every token invalid at the next apply.
pub fn init_with(
    inv: &Inventory,
    dir: &StateDir,
    unlock: &Unlock,
    now: OffsetDateTime,
    replace_lost: bool,
) -> Result<(Pki, InitReport), PkiError> {
    let key = dir.unlock_or_create(unlock)?;
    let policy = Policy::of(inv, now);
    let specs = catalogue(inv);
    let stored = read_all(dir, &key, &specs)?;
    let mut report = InitReport::default();
    let mut certs = BTreeMap::new();
    let mut pending = Vec::new();
    let mut cas = BTreeMap::new();
    let mut trust = BTreeMap::new();

    for (spec, st) in specs.iter().zip(&stored).filter(|(s, _)| s.is_ca()) {
        let (issued, action) = match (&st.cert, &st.key) {
            (Some(cert), Some(k)) => {
                let current = Issued {
                    cert_pem: cert.clone(),
                    key_pem: k.clone(),
                };
                let view = checked_view(dir, &key, &spec.name, current, Some(now))?;
                trust.insert(spec.name.clone(), view.trust());
                (view.signer, Issuance::Reused)
            }
            (None, None) => {
                let issued = issue::self_signed_ca(spec, &policy)?;
                pending.extend(dir.issued_files(&key, &spec.name, &issued)?);
                trust.insert(spec.name.clone(), issued.cert_pem.clone());
                (issued, Issuance::Issued)
            }
            (cert, _) => return Err(half_missing(dir, &spec.name, cert.is_some())),
        };
        let facts = CertFacts::parse(&spec.name, &issued.cert_pem)?;
        cas.insert(
            spec.name.clone(),
            (Signer::new(&spec.name, &issued)?, facts),
        );
        report.entries.push((spec.name.clone(), action));
        certs.insert(spec.name.clone(), issued);
    }

    let leaves: Vec<(&CertSpec, &Stored)> = specs
        .iter()
        .zip(&stored)
        .filter(|(s, _)| !s.is_ca())
        .collect();
    let verdicts = par_map(&leaves, |(spec, st)| {
        let (_, ca) = &cas[spec.ca.as_deref().unwrap_or_default()];
        examine(spec, st, ca, policy.key_algorithm, Some(now))
    });
    let mut to_issue = Vec::new();
    for ((spec, st), verdict) in leaves.iter().zip(verdicts) {
        match verdict? {
            None => {
                let issued = Issued {
                    cert_pem: st.cert.clone().unwrap_or_default(),
                    key_pem: st.key.clone().unwrap_or_else(|| Secret::new(vec![])),
                };
                certs.insert(spec.name.clone(), issued);
                report.entries.push((spec.name.clone(), Issuance::Reused));
            }
            Some(action) => {
                report.entries.push((spec.name.clone(), action));
                to_issue.push(*spec);
            }
        }
    }
    let fresh = par_map(&to_issue, |spec| {
        let (signer, _) = &cas[spec.ca.as_deref().unwrap_or_default()];
        let issued = signer.sign(spec, &policy)?;
        let files = dir.issued_files(&key, &spec.name, &issued)?;
        Ok::<_, PkiError>((issued, files))
    });
    for (spec, r) in to_issue.iter().zip(fresh) {
        let (issued, files) = r?;
        pending.extend(files);
        certs.insert(spec.name.clone(), issued);
    }
    // Keep the report in catalogue order, whatever order the decisions came in.
    let order: BTreeMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    report.entries.sort_by_key(|(n, _)| order[n.as_str()]);

    // The cluster exists once its CAs do: its SA and encryption keys are in use.
    let existing = report
        .entries
        .iter()
        .any(|(n, a)| *a == Issuance::Reused && cas.contains_key(n));
    fn missing<'a>(refuse: bool, policy: &'a Policy, pending: &'a mut Vec<Pending>) -> Missing<'a> {
        if refuse {
            Missing::Refuse("although the cluster's CAs exist (it was set up before)")
        } else {
            Missing::Issue(policy, pending)
        }
    }
    let refuse = existing && !replace_lost;
    let (sa_key, sa_pub, sa_action) =
        service_account(dir, &key, missing(refuse, &policy, &mut pending))?;
    report.entries.push(("sa".into(), sa_action));
    let (encryption_keys, enc_action) =
        encryption_key(dir, &key, missing(refuse, &policy, &mut pending))?;
    report.entries.push(("encryption-key".into(), enc_action));
    let (push_keys, push_report) = push_keys(inv, dir, &key, Some(&mut pending))?;
    report.entries.extend(push_report);

    let pki = Pki {
        certs,
        trust,
        service_account_key: sa_key,
        service_account_pub: sa_pub,
        encryption_keys,
        push_keys,
    };
    super_admin_conf(inv, dir, &key, &pki, &mut pending)?;
    dir.write_all(pending)?;
    Ok((pki, report))
}

/// Loads a complete, verified PKI for render; anything missing or stale is an
/// error that sends the admin to `rampart init`. Expiry is not judged here (no
/// clock): `list` and `init` do that.
pub fn load(inv: &Inventory, dir: &StateDir, unlock: &Unlock) -> Result<Pki, PkiError> {
    let key = dir.unlock(unlock)?;
    let specs = catalogue(inv);
    let stored = read_all(dir, &key, &specs)?;
    let mut cas = BTreeMap::new();
    let mut certs = BTreeMap::new();
    let mut trust = BTreeMap::new();
    for (spec, st) in specs.iter().zip(&stored) {
        let (Some(cert), Some(key_pem)) = (&st.cert, &st.key) else {
            return Err(PkiError::NotInitialised {
                name: spec.name.clone(),
                reason: "certificate or key missing from the state dir".into(),
            });
        };
        if spec.is_ca() {
            let current = Issued {
                cert_pem: cert.clone(),
                key_pem: key_pem.clone(),
            };
            let view = checked_view(dir, &key, &spec.name, current, None)?;
            cas.insert(
                spec.name.clone(),
                CertFacts::parse(&spec.name, &view.signer.cert_pem)?,
            );
            trust.insert(spec.name.clone(), view.trust());
            certs.insert(spec.name.clone(), view.signer);
            continue;
        } else {
            let ca = &cas[spec.ca.as_deref().unwrap_or_default()];
            if let Some(Issuance::Reissued { reason }) =
                examine(spec, st, ca, inv.security.key_algorithm, None)?
            {
                return Err(PkiError::NotInitialised {
                    name: spec.name.clone(),
                    reason,
                });
            }
        }
        let issued = Issued {
            cert_pem: cert.clone(),
            key_pem: key_pem.clone(),
        };
        certs.insert(spec.name.clone(), issued);
    }
    // The same checks as init, pairs included: a sealed file swapped for
    // another (front-proxy-ca.key.age over sa.key.age) is refused here too,
    // never shipped to a host.
    const REFUSE: Missing = Missing::Refuse("(`rampart init` has not created it)");
    let (sa_key, sa_pub, _) = service_account(dir, &key, REFUSE)?;
    let (encryption_keys, _) = encryption_key(dir, &key, REFUSE)?;
    let (push_keys, _) = push_keys(inv, dir, &key, None)?;
    Ok(Pki {
        certs,
        trust,
        service_account_key: sa_key,
        service_account_pub: sa_pub,
        encryption_keys,
        push_keys,
    })
}

/// Reads (and unseals, in parallel) every certificate and key of the catalogue.
fn read_all(dir: &StateDir, key: &StateKey, specs: &[CertSpec]) -> Result<Vec<Stored>, PkiError> {
    par_map(specs, |spec| {
        Ok(Stored {
            cert: dir.read_cert(&spec.name)?,
            key: dir.read_sealed(&dir.key_path(&spec.name), key)?,
        })
    })
    .into_iter()
    .collect()
}

/// CA `name` as it stands in its rotation (see [`rotation::view`]), each
/// certificate in it checked with [`check_ca`].
fn checked_view(
    dir: &StateDir,
    key: &StateKey,
    name: &str,
    current: Issued,
    now: Option<OffsetDateTime>,
) -> Result<CaView, PkiError> {
    let view = rotation::view(dir, key, name, current)?;
    check_ca(name, &view.signer.cert_pem, &view.signer.key_pem, now)?;
    if let Some(other) = &view.other {
        let facts = CertFacts::parse(name, other)?;
        if !facts.is_ca {
            return Err(PkiError::BrokenChain {
                name: name.into(),
                ca: name.into(),
                reason: "the other CA of its rotation is not a CA certificate".into(),
            });
        }
    }
    Ok(view)
}

/// A CA must be a CA, sign itself, match its key and (when `now` is known) be valid.
fn check_ca(
    name: &str,
    cert: &str,
    key: &Secret,
    now: Option<OffsetDateTime>,
) -> Result<CertFacts, PkiError> {
    let facts = CertFacts::parse(name, cert)?;
    let broken = |reason: String| PkiError::BrokenChain {
        name: name.into(),
        ca: name.into(),
        reason,
    };
    if !facts.is_ca {
        return Err(broken("not a CA certificate".into()));
    }
    facts.verify_signed_by(&facts).map_err(broken)?;
    if !key_matches(key, &facts) {
        return Err(PkiError::CaKeyMismatch { name: name.into() });
    }
    if let Some(now) = now {
        if facts.not_after <= now {
            return Err(PkiError::CaExpired {
                name: name.into(),
                not_after: facts.not_after.to_string(),
            });
        }
    }
    Ok(facts)
}

/// None: reuse as is. Some(Issued): nothing there. Some(Reissued): stale, with why.
/// Err: the certificate does not chain to its CA, which is never papered over.
fn examine(
    spec: &CertSpec,
    st: &Stored,
    ca: &CertFacts,
    alg: crate::inventory::KeyAlgorithm,
    now: Option<OffsetDateTime>,
) -> Result<Option<Issuance>, PkiError> {
    let Some(cert) = &st.cert else {
        return Ok(Some(Issuance::Issued));
    };
    let facts = CertFacts::parse(&spec.name, cert)?;
    facts
        .verify_signed_by(ca)
        .map_err(|reason| PkiError::BrokenChain {
            name: spec.name.clone(),
            ca: spec.ca.clone().unwrap_or_default(),
            reason,
        })?;
    let mut reasons = Vec::new();
    match &st.key {
        None => reasons.push("private key missing".to_string()),
        Some(k) if !key_matches(k, &facts) => {
            reasons.push("private key does not match the certificate".into())
        }
        Some(_) => {}
    }
    if let Some(now) = now {
        if facts.not_after <= now {
            reasons.push(format!("expired on {}", facts.not_after.date()));
        }
    }
    reasons.extend(facts.differences(spec, alg));
    Ok((!reasons.is_empty()).then(|| Issuance::Reissued {
        reason: reasons.join("; "),
    }))
}

fn key_matches(key: &Secret, facts: &CertFacts) -> bool {
    KeyPair::from_pem(key.expose_str()).is_ok_and(|k| k.der_bytes() == facts.public_key_der)
}

fn half_missing(dir: &StateDir, name: &str, have_cert: bool) -> PkiError {
    let path = if have_cert {
        dir.key_path(name)
    } else {
        dir.cert_path(name)
    };
    PkiError::Corrupt {
        path,
        reason: format!("the {name} CA is half there; a CA is never regenerated automatically"),
    }
}
