//! Key generation and signing with rcgen: CAs, leaves, and the service-account key.
//!
//! Pure apart from the system RNG: the clock comes in as `now`.

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::inventory::{KeyAlgorithm, San};
use crate::secret::Secret;

use super::catalogue::CertSpec;
use super::{Issued, PkiError};

/// How far certificates are backdated, so a host whose clock is a little behind
/// does not reject a certificate issued a moment ago (kubeadm does the same).
const BACKDATE: Duration = Duration::minutes(5);

/// The OID of X.520 organizationName, for the second `O=` value (see [`subject`]).
const ORG_NAME_OID: [u64; 4] = [2, 5, 4, 10];

/// Lifetimes and key algorithm for one run, from the inventory's `security` block.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub key_algorithm: KeyAlgorithm,
    pub ca_validity_days: u32,
    pub leaf_validity_days: u32,
    pub now: OffsetDateTime,
}

/// A fresh private key of the configured algorithm.
pub fn generate_key(alg: KeyAlgorithm, name: &str) -> Result<KeyPair, PkiError> {
    let r = match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        }
        KeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
        }
    };
    r.map_err(|source| PkiError::KeyGen {
        name: name.into(),
        source,
    })
}

fn is_rsa(alg: KeyAlgorithm) -> bool {
    matches!(
        alg,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096
    )
}

/// A new self-signed CA for `spec`.
pub fn self_signed_ca(spec: &CertSpec, policy: &Policy) -> Result<Issued, PkiError> {
    let key = generate_key(policy.key_algorithm, &spec.name)?;
    let mut params = base_params(spec, policy.now, policy.ca_validity_days);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
        name: spec.name.clone(),
        source,
    })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: Secret::from(key.serialize_pem()),
    })
}

/// A CA loaded from the state dir, ready to sign leaves. Shared across threads.
pub struct Signer {
    pub name: String,
    issuer: Issuer<'static, KeyPair>,
    /// Leaves never outlive their CA.
    not_after: OffsetDateTime,
}

impl Signer {
    /// Builds a signer from a CA's PEM certificate and key.
    pub fn new(name: &str, ca: &Issued) -> Result<Signer, PkiError> {
        let key =
            KeyPair::from_pem(ca.key_pem.expose_str()).map_err(|source| PkiError::BadKey {
                name: name.into(),
                path: format!("{name}.key.age").into(),
                source,
            })?;
        let facts = super::inspect::CertFacts::parse(name, &ca.cert_pem)?;
        if facts.public_key_der != key.der_bytes() {
            return Err(PkiError::CaKeyMismatch { name: name.into() });
        }
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|e| PkiError::BadCert {
                name: name.into(),
                path: format!("{name}.crt").into(),
                reason: e.to_string(),
            })?;
        Ok(Signer {
            name: name.into(),
            issuer,
            not_after: facts.not_after,
        })
    }

    /// Issues a leaf for `spec` with a fresh key.
    pub fn sign(&self, spec: &CertSpec, policy: &Policy) -> Result<Issued, PkiError> {
        let key = generate_key(policy.key_algorithm, &spec.name)?;
        let mut params = base_params(spec, policy.now, policy.leaf_validity_days);
        params.not_after = params.not_after.min(self.not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if is_rsa(policy.key_algorithm) {
            // RSA key transport in TLS ≤1.2 needs it; ECDSA keys cannot encipher.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        if spec.usage.server() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.usage.client() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.subject_alt_names = spec
            .sans
            .iter()
            .map(|s| san_type(s, &spec.name))
            .collect::<Result<_, _>>()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign {
                name: spec.name.clone(),
                source,
            })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Secret::from(key.serialize_pem()),
        })
    }
}

fn base_params(spec: &CertSpec, now: OffsetDateTime, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(random_serial());
    params.distinguished_name = subject(&spec.common_name, &spec.organizations);
    params
}

/// rcgen keeps one value per attribute type, so a second organisation rides on the
/// same OID spelled as a custom type; Kubernetes reads every `O=` in the subject.
fn subject(cn: &str, orgs: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = orgs.first() {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(o) = orgs.get(1) {
        dn.push(DnType::CustomDnType(ORG_NAME_OID.to_vec()), o.as_str());
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// The most organisations [`subject`] can encode.
pub const MAX_ORGANIZATIONS: usize = 2;

/// 128 random bits, positive, never zero-led (RFC 5280 §4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn san_type(s: &San, name: &str) -> Result<SanType, PkiError> {
    Ok(match s {
        San::Ip(ip) => SanType::IpAddress(*ip),
        San::Dns(d) => {
            SanType::DnsName(d.as_str().try_into().map_err(|source| PkiError::Sign {
                name: name.into(),
                source,
            })?)
        }
    })
}

/// The service-account signing key pair: (private PEM, public PEM).
pub fn service_account_key(alg: KeyAlgorithm) -> Result<(Secret, String), PkiError> {
    let key = generate_key(alg, "sa")?;
    Ok((Secret::from(key.serialize_pem()), key.public_key_pem()))
}

/// 32 random bytes for the EncryptionConfiguration (secretbox, aescbc and aesgcm all take 32).
pub fn encryption_key() -> Secret {
    let mut b = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    Secret::new(b)
}
