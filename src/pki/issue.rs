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

impl Policy {
    /// The inventory's `security` lifetimes and key algorithm, at `now`.
    pub fn of(inv: &crate::inventory::Inventory, now: OffsetDateTime) -> Policy {
        Policy {
            key_algorithm: inv.security.key_algorithm,
            ca_validity_days: inv.security.ca_validity_days,
            leaf_validity_days: inv.security.leaf_validity_days,
            now,
        }
    }
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
    let mut params = base_params(spec, policy.now, policy.ca_validity_days)?;
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
        let mut params = base_params(spec, policy.now, policy.leaf_validity_days)?;
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

fn base_params(
    spec: &CertSpec,
    now: OffsetDateTime,
    days: u32,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    // Validation bounds `days`; a lifetime past the representable dates is
    // still an error here, never a panic.
    params.not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| PkiError::Validity {
            name: spec.name.clone(),
            days,
        })?;
    params.serial_number = Some(random_serial());
    params.distinguished_name = subject(&spec.common_name, &spec.organizations);
    Ok(params)
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

/// An ed25519 SSH key pair for an etcd member's backup copies: the private
/// half in OpenSSH format, the public half as an `authorized_keys` key
/// (`ssh-ed25519 AAAA… <comment>`).
pub fn ssh_push_key(comment: &str) -> Result<(Secret, String), PkiError> {
    use russh::keys::ssh_key::{private::Ed25519Keypair, LineEnding, PrivateKey};
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let bad = |e: russh::keys::ssh_key::Error| PkiError::SshKey {
        name: comment.to_string(),
        reason: e.to_string(),
    };
    let private = key.to_openssh(LineEnding::LF).map_err(bad)?;
    let public = key.public_key().to_openssh().map_err(bad)?;
    Ok((Secret::from(private.to_string()), public))
}

/// 32 random bytes for the EncryptionConfiguration (secretbox, aescbc and aesgcm all take 32).
pub fn encryption_key() -> Secret {
    let mut b = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    Secret::new(b)
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::pki::catalogue::Usage;
    use crate::pki::inspect::CertFacts;

    fn policy(alg: KeyAlgorithm) -> Policy {
        Policy {
            key_algorithm: alg,
            ca_validity_days: 3650,
            leaf_validity_days: 365,
            now: time::macros::datetime!(2025-01-01 0:00 UTC),
        }
    }

    fn spec(name: &str, ca: Option<&str>, usage: Usage, orgs: &[&str]) -> CertSpec {
        CertSpec {
            name: name.into(),
            description: name.into(),
            ca: ca.map(str::to_string),
            common_name: format!("cn-{name}"),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            usage,
            sans: vec![San::Dns("a.example".into()), San::parse("10.0.0.1")],
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    fn ca_and_leaf(alg: KeyAlgorithm, usage: Usage) -> (Issued, Issued) {
        let p = policy(alg);
        let ca = self_signed_ca(&spec("ca", None, Usage::Ca, &[]), &p).unwrap();
        let signer = Signer::new("ca", &ca).unwrap();
        let leaf = signer
            .sign(&spec("leaf", Some("ca"), usage, &["g1", "g2"]), &p)
            .unwrap();
        (ca, leaf)
    }

    #[test]
    fn ca_has_basic_constraints_and_cert_sign() {
        let (ca, _) = ca_and_leaf(KeyAlgorithm::EcdsaP256, Usage::Server);
        let d = der(&ca.cert_pem);
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        assert!(c.is_ca());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(c.extended_key_usage().unwrap().is_none());
        c.verify_signature(None).unwrap();
        assert!(!ca.key_pem.expose_str().is_empty());
    }

    #[test]
    fn leaf_usages_sans_subject_and_chain() {
        let (ca, leaf) = ca_and_leaf(KeyAlgorithm::EcdsaP256, Usage::Server);
        let d = der(&leaf.cert_pem);
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        assert!(!c.is_ca());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let f = CertFacts::parse("leaf", &leaf.cert_pem).unwrap();
        assert_eq!(f.organizations, ["g1", "g2"]);
        assert_eq!(f.common_name, "cn-leaf");
        assert_eq!(
            f.sans,
            [San::Dns("a.example".into()), San::parse("10.0.0.1")]
        );
        let ca_f = CertFacts::parse("ca", &ca.cert_pem).unwrap();
        f.verify_signed_by(&ca_f).unwrap();
        assert_eq!(f.not_before, policy(KeyAlgorithm::EcdsaP256).now - BACKDATE);
        // A different CA with the same name does not verify the leaf.
        let (other, _) = ca_and_leaf(KeyAlgorithm::EcdsaP256, Usage::Server);
        let other = CertFacts::parse("ca", &other.cert_pem).unwrap();
        assert!(f.verify_signed_by(&other).is_err());
    }

    #[test]
    fn serials_are_random() {
        let (_, a) = ca_and_leaf(KeyAlgorithm::EcdsaP256, Usage::Client);
        let (_, b) = ca_and_leaf(KeyAlgorithm::EcdsaP256, Usage::Client);
        let sa = CertFacts::parse("a", &a.cert_pem).unwrap().serial;
        let sb = CertFacts::parse("b", &b.cert_pem).unwrap().serial;
        assert_ne!(sa, sb);
        assert_eq!(sa.split(':').count(), 16);
    }

    #[test]
    fn every_key_algorithm_issues_and_is_recognised() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
        ] {
            let (ca, leaf) = ca_and_leaf(alg, Usage::ServerAndClient);
            let f = CertFacts::parse("leaf", &leaf.cert_pem).unwrap();
            assert_eq!(f.key_algorithm, Some(alg));
            assert!(f.server_auth && f.client_auth);
            f.verify_signed_by(&CertFacts::parse("ca", &ca.cert_pem).unwrap())
                .unwrap();
            let d = der(&leaf.cert_pem);
            let (_, c) = X509Certificate::from_der(&d).unwrap();
            let ke = c.key_usage().unwrap().unwrap().value.key_encipherment();
            assert_eq!(ke, is_rsa(alg), "{alg:?}");
        }
        // 4096 only for the key itself: signing with it is the same code path.
        let k = generate_key(KeyAlgorithm::Rsa4096, "big").unwrap();
        assert!(k.serialize_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn leaves_never_outlive_their_ca() {
        let mut p = policy(KeyAlgorithm::EcdsaP256);
        p.ca_validity_days = 10;
        p.leaf_validity_days = 365;
        let ca = self_signed_ca(&spec("ca", None, Usage::Ca, &[]), &p).unwrap();
        let leaf = Signer::new("ca", &ca)
            .unwrap()
            .sign(&spec("l", Some("ca"), Usage::Client, &[]), &p)
            .unwrap();
        let (c, l) = (
            CertFacts::parse("ca", &ca.cert_pem).unwrap(),
            CertFacts::parse("l", &leaf.cert_pem).unwrap(),
        );
        assert_eq!(c.not_after, l.not_after);
    }

    #[test]
    fn push_keys_are_fresh_openssh_ed25519_pairs() {
        let (private, public) = ssh_push_key("rampart-backup-push:prod/cp1").unwrap();
        let parsed = russh::keys::PrivateKey::from_openssh(private.expose_str()).unwrap();
        assert_eq!(parsed.public_key().to_openssh().unwrap(), public);
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert!(
            public.ends_with(" rampart-backup-push:prod/cp1"),
            "{public}"
        );
        assert_ne!(ssh_push_key("x").unwrap().1, ssh_push_key("x").unwrap().1);
    }

    #[test]
    fn encryption_key_is_32_random_bytes() {
        let (a, b) = (encryption_key(), encryption_key());
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a, b);
    }
}
