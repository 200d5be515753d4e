//! `rampart pki list`: what is in the state dir, judged against the catalogue.
//! Reads only public certificates, so it needs no unlock and prints no secret.

use std::collections::BTreeMap;

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::inventory::Inventory;

use super::catalogue::catalogue;
use super::inspect::{san_diff, CertFacts};
use super::store::StateDir;
use super::PkiError;

/// Certificates closer than this to their end are flagged.
pub const EXPIRY_WARNING: Duration = Duration::days(30);

/// The state of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Missing,
    /// Valid for less than [`EXPIRY_WARNING`].
    ExpiresSoon,
    Expired,
    /// The inventory now wants other SANs; `rampart init` reissues it.
    SanMismatch,
    /// CN, O, usages or key algorithm differ from the inventory; `rampart init` reissues it.
    Mismatch,
    /// Not signed by its CA: `rampart init` will refuse until this is sorted out.
    BrokenChain,
}

/// One row of the listing. Keys are camelCase (`commonName`, `notAfter`),
/// like the inventory and the bundle's manifests.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    pub name: String,
    pub description: String,
    pub ca: Option<String>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub sans: Vec<String>,
    /// RFC 3339; None when the certificate is missing.
    pub not_after: Option<String>,
    pub serial: Option<String>,
    pub status: Status,
    /// Why the status is not `ok`, when there is more to say.
    pub detail: Option<String>,
}

/// Lists every certificate of the catalogue with its status at `now`.
pub fn list(
    inv: &Inventory,
    dir: &StateDir,
    now: OffsetDateTime,
) -> Result<Vec<CertInfo>, PkiError> {
    let specs = catalogue(inv);
    let mut facts: BTreeMap<String, CertFacts> = BTreeMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in &specs {
        // Mid-rotation, leaves are judged against the CA that signs them now.
        let pem = if spec.is_ca() {
            super::rotation::signer_cert(dir, &spec.name)?
        } else {
            dir.read_cert(&spec.name)?
        };
        let Some(pem) = pem else {
            out.push(CertInfo {
                name: spec.name.clone(),
                description: spec.description.clone(),
                ca: spec.ca.clone(),
                common_name: spec.common_name.clone(),
                organizations: spec.organizations.clone(),
                sans: spec.sans.iter().map(|s| s.to_string()).collect(),
                not_after: None,
                serial: None,
                status: Status::Missing,
                detail: None,
            });
            continue;
        };
        let f = CertFacts::parse(&spec.name, &pem)?;
        let ca_facts = spec.ca.as_ref().and_then(|c| facts.get(c)).unwrap_or(&f);
        let (status, detail) = if let Err(e) = f.verify_signed_by(ca_facts) {
            (Status::BrokenChain, Some(e))
        } else if f.not_after <= now {
            (Status::Expired, None)
        } else if let Some(d) = (!spec.is_ca())
            .then(|| san_diff(&f.sans, &spec.sans))
            .flatten()
        {
            (Status::SanMismatch, Some(d))
        } else if let Some(d) = (!spec.is_ca())
            .then(|| f.differences(spec, inv.security.key_algorithm))
            .filter(|d| !d.is_empty())
        {
            (Status::Mismatch, Some(d.join("; ")))
        } else if f.not_after - now < EXPIRY_WARNING {
            (Status::ExpiresSoon, None)
        } else {
            (Status::Ok, None)
        };
        out.push(CertInfo {
            name: spec.name.clone(),
            description: spec.description.clone(),
            ca: spec.ca.clone(),
            common_name: f.common_name.clone(),
            organizations: f.organizations.clone(),
            sans: f.sans.iter().map(|s| s.to_string()).collect(),
            not_after: f
                .not_after
                .format(&time::format_description::well_known::Rfc3339)
                .ok(),
            serial: Some(f.serial.clone()),
            status,
            detail,
        });
        if spec.is_ca() {
            facts.insert(spec.name.clone(), f);
        }
    }
    Ok(out)
}
