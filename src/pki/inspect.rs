//! Reading existing certificates back with x509-parser: what they say, whether they
//! chain to their CA, and how they differ from the catalogue's spec.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::inventory::{KeyAlgorithm, San};

use super::catalogue::{CertSpec, Usage};
use super::PkiError;

/// The facts of one certificate that rampart cares about.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub sans: Vec<San>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub is_ca: bool,
    /// None for a key type rampart never generates.
    pub key_algorithm: Option<KeyAlgorithm>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Hex, colon separated, as openssl prints it.
    pub serial: String,
    /// The subjectPublicKey bits, to match a private key against.
    pub public_key_der: Vec<u8>,
    der: Vec<u8>,
}

impl CertFacts {
    /// Parses a PEM certificate; `name` is only for the error.
    pub fn parse(name: &str, pem: &str) -> Result<CertFacts, PkiError> {
        let bad = |reason: String| PkiError::BadCert {
            name: name.into(),
            path: format!("{name}.crt").into(),
            reason,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        let der = pem.contents;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
        let text = |a: &x509_parser::x509::AttributeTypeAndValue| {
            a.as_str().map(str::to_string).unwrap_or_default()
        };
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .map(text)
            .next()
            .unwrap_or_default();
        let organizations = subject.iter_organization().map(text).collect();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => sans.push(San::Dns(d.to_string())),
                    GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from_bytes(b) {
                            sans.push(San::Ip(ip));
                        }
                    }
                    _ => {}
                }
            }
        }
        let (server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(e)) => (e.value.server_auth, e.value.client_auth),
            _ => (false, false),
        };
        let key_algorithm = match cert.public_key().parsed() {
            Ok(PublicKey::EC(p)) => match p.key_size() {
                256 => Some(KeyAlgorithm::EcdsaP256),
                384 => Some(KeyAlgorithm::EcdsaP384),
                _ => None,
            },
            Ok(PublicKey::RSA(r)) => match r.key_size() {
                2048 => Some(KeyAlgorithm::Rsa2048),
                3072 => Some(KeyAlgorithm::Rsa3072),
                4096 => Some(KeyAlgorithm::Rsa4096),
                _ => None,
            },
            _ => None,
        };
        let to_time = |t: &x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let facts = CertFacts {
            common_name,
            organizations,
            sans,
            server_auth,
            client_auth,
            is_ca: cert.is_ca(),
            key_algorithm,
            not_before: to_time(&cert.validity().not_before),
            not_after: to_time(&cert.validity().not_after),
            serial: cert.raw_serial_as_string(),
            public_key_der: cert.public_key().subject_public_key.data.to_vec(),
            der: Vec::new(),
        };
        Ok(CertFacts { der, ..facts })
    }

    /// Checks that `ca`'s key signed this certificate; the error is the reason.
    pub fn verify_signed_by(&self, ca: &CertFacts) -> Result<(), String> {
        let (_, leaf) = X509Certificate::from_der(&self.der).map_err(|e| e.to_string())?;
        let (_, issuer) = X509Certificate::from_der(&ca.der).map_err(|e| e.to_string())?;
        if leaf.issuer().to_string() != issuer.subject().to_string() {
            return Err(format!(
                "issued by `{}`, not by `{}`",
                leaf.issuer(),
                issuer.subject()
            ));
        }
        leaf.verify_signature(Some(issuer.public_key()))
            .map_err(|_| "signature does not verify with the CA's key".to_string())
    }

    /// Why this certificate no longer matches `spec` (empty: it matches).
    pub fn differences(&self, spec: &CertSpec, alg: KeyAlgorithm) -> Vec<String> {
        let mut out = Vec::new();
        if self.common_name != spec.common_name {
            out.push(format!(
                "CN changed: {} → {}",
                self.common_name, spec.common_name
            ));
        }
        let have: BTreeSet<&String> = self.organizations.iter().collect();
        let want: BTreeSet<&String> = spec.organizations.iter().collect();
        if have != want {
            out.push(format!("O changed: {have:?} → {want:?}"));
        }
        if let Some(d) = san_diff(&self.sans, &spec.sans) {
            out.push(format!("SANs changed: {d}"));
        }
        let usage_ok = self.server_auth == spec.usage.server()
            && self.client_auth == spec.usage.client()
            && self.is_ca == (spec.usage == Usage::Ca);
        if !usage_ok {
            out.push(format!("usages changed: now {:?}", spec.usage));
        }
        if self.key_algorithm != Some(alg) {
            out.push(format!(
                "key algorithm changed: {} → {}",
                alg_name(self.key_algorithm),
                alg_name(Some(alg))
            ));
        }
        out
    }
}

/// `+DNS:new.example -IP:10.0.0.9`, or None when the sets are equal.
pub fn san_diff(have: &[San], want: &[San]) -> Option<String> {
    let have: BTreeSet<&San> = have.iter().collect();
    let want: BTreeSet<&San> = want.iter().collect();
    if have == want {
        return None;
    }
    let added = want.difference(&have).map(|s| format!("+{s}"));
    let removed = have.difference(&want).map(|s| format!("-{s}"));
    Some(added.chain(removed).collect::<Vec<_>>().join(" "))
}

/// The inventory's spelling (`ecdsa-p256`).
pub fn alg_name(alg: Option<KeyAlgorithm>) -> String {
    match alg {
        Some(a) => serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None => "unknown".into(),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(<[u8; 4]>::try_from(b).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(b).ok()?.into()),
        _ => None,
    }
}
